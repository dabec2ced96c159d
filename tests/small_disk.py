"""A real small filesystem for the full-disk tests: a tmpfs of a given size (fixture ``small_disk`` in conftest.py).

Mounting needs privileges; the first way that works is used:

1. ``mount -t tmpfs`` directly (root, or CAP_SYS_ADMIN);
2. ``sudo -n mount`` (passwordless sudo);
3. unprivileged: a helper process in its own user and mount namespace (``unshare --user --map-root-user
   --mount``, allowed by default on Debian/Ubuntu kernels) mounts the tmpfs and sleeps; every process of this user
   reaches that filesystem as ``/proc/<helper pid>/root/<folder>`` (statvfs included), and it disappears when the
   helper is killed.

Only when none works do the tests skip, saying why. ``python tests/small_disk.py`` checks which way works here.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import List, Optional


class MountImpossible(RuntimeError):
    pass


class SmallDisk:
    def __init__(self, folder: Path, mib: int):
        self.folder = Path(folder)
        self.mib = mib
        self.path: Optional[Path] = None  # where the filesystem is reached
        self.how: Optional[str] = None
        self._helper: Optional[subprocess.Popen] = None

    def _opts(self) -> str:
        return f"size={self.mib}m,uid={os.getuid()},gid={os.getgid()},mode=0755"

    def mount(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        errors: List[str] = []
        cmd = ["mount", "-t", "tmpfs", "-o", self._opts(), "tmpfs", str(self.folder)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            self.path, self.how = self.folder, "mount"
            return self.path
        errors.append(f"mount: {r.stderr.strip()}")
        if os.geteuid() != 0 and shutil.which("sudo"):
            r = subprocess.run(["sudo", "-n", *cmd], capture_output=True, text=True)
            if r.returncode == 0:
                self.path, self.how = self.folder, "sudo mount"
                return self.path
            errors.append(f"sudo -n mount: {r.stderr.strip()}")
        if shutil.which("unshare"):
            # inside the namespace the user is root: the tmpfs is owned by root there, which is this user outside
            script = (f"mount -t tmpfs -o size={self.mib}m,mode=0777 tmpfs '{self.folder}' && echo mounted "
                      f"&& exec sleep 100000")
            p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
            line = p.stdout.readline().strip()
            if line == "mounted":
                self._helper = p
                self.path, self.how = Path(f"/proc/{p.pid}/root{self.folder}"), "unshare"
                return self.path
            p.wait(timeout=10)
            errors.append(f"unshare: {p.stderr.read().strip()}")
        raise MountImpossible("; ".join(errors))

    def unmount(self) -> None:
        if self._helper is not None:
            os.killpg(self._helper.pid, signal.SIGKILL)
            self._helper.wait()
            self._helper = None
        elif self.how == "mount":
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)
        elif self.how == "sudo mount":
            subprocess.run(["sudo", "-n", "umount", "-l", str(self.folder)], capture_output=True)
        self.how = None


if __name__ == "__main__":
    import tempfile

    d = SmallDisk(Path(tempfile.mkdtemp(prefix="small-disk-")) / "disk", 4)
    try:
        path = d.mount()
    except MountImpossible as exc:
        raise SystemExit(f"no way to mount a tmpfs here: {exc}")
    st = os.statvfs(path)
    written = 0
    try:
        with open(path / "filler", "wb", buffering=0) as f:
            while True:
                written += f.write(b"\0" * 65536)
    except OSError as exc:
        print(f"{d.how}: {st.f_blocks * st.f_frsize >> 20} MiB filesystem at {path}; full after "
              f"{written >> 20} MiB ({exc.strerror})")
    finally:
        d.unmount()
