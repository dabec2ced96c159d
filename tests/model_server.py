"""A real OpenAI-compatible model server for the tests, and a real proxy in front of it that injects faults.

``ModelServer``: ``transformers serve`` (transformers' own OpenAI-compatible server: FastAPI + uvicorn) on
127.0.0.1, CPU, serving the tiny local models by path (loaded on the first request), ``HF_HUB_OFFLINE=1``.

``FaultProxy``: this file run as a process (``python tests/model_server.py proxy ...``), an aiohttp server that
forwards every request to the upstream server and answers with the upstream's answer, except that

* ``--script ok,429,503,close,...`` answers the first chat requests, in arrival order, with these faults instead
  (``ok`` forwards; a status, with ``Retry-After: --retry-after`` on 429; ``close`` drops the connection without
  an answer);
* ``--auth KEY`` answers 401 to any request without ``Authorization: Bearer KEY``;

and logs each chat request (arrival time, end time, requests in flight at arrival, the answer given) as JSON Lines
to ``--log``, from which the tests read concurrency, rate and retry timing. Every model answer still comes from
the real model server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from aiohttp import ClientSession, ClientTimeout, web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError as exc:
            if getattr(exc, "code", None) and exc.code < 500:
                return
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"{what} did not answer {url} within {timeout} s: {log.read_text()[-2000:]}")


class _Process:
    proc: Optional[subprocess.Popen] = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ModelServer(_Process):
    """``transformers serve`` on 127.0.0.1 (module docstring); ``url`` is its OpenAI base URL."""

    def __init__(self, workdir, port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = self.workdir / "transformers-serve.log"

    def start(self, timeout: float = 180.0) -> "ModelServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", "--host",
                                      "127.0.0.1", "--port", str(self.port), "--device", "cpu"],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env)
        _wait_http(f"http://127.0.0.1:{self.port}/health", self.proc, timeout, "transformers serve", self.log)
        return self


class FaultProxy(_Process):
    """This file's proxy as a process in front of ``upstream`` (module docstring)."""

    def __init__(self, upstream: str, workdir, script: str = "", retry_after: float = 0.3,
                 auth: Optional[str] = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.upstream, self.script, self.retry_after, self.auth = upstream, script, retry_after, auth
        self.log = self.workdir / f"proxy-{self.port}.jsonl"
        self.out = self.workdir / f"proxy-{self.port}.out"

    def start(self, timeout: float = 60.0) -> "FaultProxy":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "proxy", "--upstream", self.upstream.rstrip("/").removesuffix("/v1"),
               "--port", str(self.port), "--log", str(self.log), "--script", self.script, "--retry-after",
               str(self.retry_after)]
        if self.auth:
            cmd += ["--auth", self.auth]
        self.proc = subprocess.Popen(cmd, stdout=open(self.out, "wb"), stderr=subprocess.STDOUT)
        _wait_http(f"http://127.0.0.1:{self.port}/health", self.proc, timeout, "fault proxy", self.out)
        return self

    def requests(self) -> List[Dict]:
        if not self.log.exists():
            return []
        return [json.loads(ln) for ln in self.log.read_text().splitlines() if ln.strip()]


def _serve_proxy(args) -> None:
    script = [s for s in args.script.split(",") if s]
    state = {"chat": 0, "in_flight": 0}
    log = open(args.log, "a", buffering=1)

    async def handle(request: web.Request) -> web.StreamResponse:
        if args.auth and request.headers.get("Authorization") != f"Bearer {args.auth}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.read()
        chat = request.path.endswith("/chat/completions")
        entry = {}
        if chat:
            n = state["chat"]
            state["chat"] += 1
            state["in_flight"] += 1
            entry = {"n": n, "t0": time.time(), "in_flight": state["in_flight"]}
        try:
            fault = script[entry["n"]] if chat and entry["n"] < len(script) else None
            fault = None if fault == "ok" else fault
            if fault == "close":
                entry["answer"] = "close"
                request.transport.close()
                raise ConnectionResetError("dropped by the fault proxy")
            if fault is not None:
                status = int(fault)
                headers = {"Retry-After": str(args.retry_after)} if status == 429 else {}
                entry["answer"] = status
                return web.json_response({"error": {"message": f"injected {status}"}}, status=status,
                                         headers=headers)
            async with ClientSession(timeout=ClientTimeout(total=600)) as s:
                async with s.request(request.method, args.upstream + request.path_qs, data=body,
                                     headers={"Content-Type": request.headers.get("Content-Type",
                                                                                   "application/json")}) as up:
                    data = await up.read()
                    entry["answer"] = up.status
                    return web.Response(body=data, status=up.status,
                                        content_type=up.content_type or "application/json")
        finally:
            if chat:
                state["in_flight"] -= 1
                entry["t1"] = time.time()
                log.write(json.dumps(entry) + "\n")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, handle_signals=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("proxy")
    q.add_argument("--upstream", required=True)
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--log", required=True)
    q.add_argument("--script", default="")
    q.add_argument("--retry-after", type=float, default=0.3)
    q.add_argument("--auth", default=None)
    a = p.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    _serve_proxy(a)
