"""Drive headless Chromium (Debian's ``chromium``, tests/install_chromium.sh) over the DevTools protocol: open a page,
set a file input, evaluate JavaScript, wait for a condition, take a screenshot. Used by the search page's browser
test; a real browser, no test double. The websocket client is aiohttp's (installed with s3fs)."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Optional

import pytest


def chromium_binary() -> str:
    for cand in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and os.path.exists(cand):
            return cand
    pytest.fail("headless Chromium is needed for the browser test: run tests/install_chromium.sh "
                "(apt-get install chromium) or set $CHROMIUM")


class Browser:
    """One headless Chromium with one page, driven synchronously."""

    def __init__(self, width: int = 1280, height: int = 900):
        import aiohttp

        self.profile = tempfile.mkdtemp(prefix="chromium-cdp-")
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                self.close()
                raise RuntimeError(f"Chromium did not start its DevTools endpoint: {err}")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)
        self.events = []

        async def connect():
            self.session = aiohttp.ClientSession()
            return await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

        self.ws = self.loop.run_until_complete(connect())
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 60, **params) -> Any:
        msg_id = next(self.ids)

        async def go():
            await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                msg = await asyncio.wait_for(self.ws.receive(), timeout)
                data = json.loads(msg.data)
                if data.get("id") == msg_id:
                    return data
                self.events.append(data)

        data = self.loop.run_until_complete(go())
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        return data.get("result", {})

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript error in {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: Optional[str] = None) -> Any:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                v = self.evaluate(expression)
            except RuntimeError as exc:  # e.g. the page is still being replaced by the navigation
                v, last = None, exc
            if v:
                return v
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what or expression}" + (f" (last error: {last})" if last else ""))

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def set_files(self, selector: str, paths) -> None:
        """What a user choosing files in the dialog does: the input gets the files and fires 'change'."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise RuntimeError(f"no element {selector!r}")
        self.call("DOM.setFileInputFiles", files=[os.path.abspath(p) for p in paths], nodeId=node)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.loop.run_until_complete(self.ws.close())
                self.loop.run_until_complete(self.session.close())
                self.loop.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and its renderers (their own group)
                self.proc.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
