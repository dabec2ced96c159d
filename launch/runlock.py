"""One owner per run: an exclusive lock on the run folder, and a lease in a remote checkpoint folder.

Two trainers writing the same run (the README's "submit again with the same name", a SLURM requeue racing the
job it replaces, two people with the same ``--name``) interleave their logs and overwrite each other's
checkpoints. So before it writes anything into a run, rank 0 takes

* ``<logs>/<name>/run.lock``: a JSON file on the shared filesystem, created with ``O_CREAT | O_EXCL`` (the one
  create that is atomic on local disks, NFSv3+ and Lustre), and, when ``--checkpoint-dir`` is another local
  folder, a ``run.lock`` there too;
* ``<checkpoint-dir>/run.lease`` for a remote checkpoint folder (``s3://...``): an object written with S3's
  conditional writes, created with ``If-None-Match: *`` and renewed or taken over with ``If-Match: <ETag>``
  (a compare-and-swap: of two writers exactly one succeeds). AWS S3, SeaweedFS and MinIO honour both headers;
  a store that ignores them gets no protection from the lease beyond the run folder's lock.

Both hold the owner's record: host, pid, SLURM job id and restart count, a random token, when it started, its
last heartbeat and after how many seconds without one it counts as stale (``--lock-stale-after``, default
120 s). A daemon thread renews the heartbeat every quarter of that time and checks the token is still its own.

A second start finds the record and

* refuses when the owner is live, naming host, pid, job and the age of its heartbeat;
* takes over when the owner is stale: its process is gone (same host, pid not running), it is an earlier
  incarnation of this same SLURM job (a requeue: same job id, another restart count; SLURM ends the old one
  first), or its heartbeat is older than its ``stale_after``. The takeover is safe against another start doing
  the same at the same moment: locally the stale file is renamed to a name only this process uses, and the
  takeover goes on only if the renamed file is the very record judged stale (same token); remotely the new
  record replaces the stale one with ``If-Match`` on the stale record's ETag.

An owner that finds another token in its lock (it was paused longer than ``stale_after`` and someone took over)
has lost the run: the heartbeat thread calls ``on_lost`` (the trainer stops at the next step without writing a
checkpoint) and :meth:`RunLocks.verify` raises, which the checkpoint commit calls right before it moves
``latest`` (a fence: a run that lost its lock never names a checkpoint). On exit the lock is removed; after
``kill -9`` or a node failure it stays and the next start takes it over as above.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional

import fsspec

LOCK_NAME = "run.lock"
LEASE_NAME = "run.lease"
DEFAULT_STALE_AFTER = 120.0


class RunLockError(RuntimeError):
    """The run is owned by another live process (or this process lost its ownership)."""


def owner_record(run: str, stale_after: float) -> Dict:
    """This process's record: who it is and when it last showed it is alive."""
    now = time.time()
    return {"run": run, "host": socket.gethostname(), "pid": os.getpid(),
            "job": os.environ.get("SLURM_JOB_ID"), "restart": os.environ.get("SLURM_RESTART_COUNT"),
            "token": uuid.uuid4().hex, "started": now, "heartbeat": now, "stale_after": float(stale_after)}


def describe(rec: Dict, now: Optional[float] = None) -> str:
    age = (now or time.time()) - float(rec.get("heartbeat", 0))
    job = f", SLURM job {rec['job']}" + (f" (restart {rec['restart']})" if rec.get("restart") else "") \
        if rec.get("job") else ""
    return f"host {rec.get('host')} pid {rec.get('pid')}{job}, last heartbeat {age:.0f} s ago"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(rec: Dict, me: Dict, now: Optional[float] = None) -> Optional[str]:
    """Why the owner ``rec`` no longer owns the run (None: it is live). ``me``: the record of the process asking."""
    now = time.time() if now is None else now
    if rec.get("host") == me["host"] and isinstance(rec.get("pid"), int) and rec["pid"] != me["pid"] \
            and not _pid_running(rec["pid"]):
        return f"its process {rec['pid']} on this host is gone"
    if rec.get("job") and rec.get("job") == me.get("job") and rec.get("restart") != me.get("restart"):
        return (f"it is an earlier run of this SLURM job {rec['job']} (restart {rec.get('restart') or 0}, now "
                f"{me.get('restart') or 0})")
    age = now - float(rec.get("heartbeat", 0))
    limit = float(rec.get("stale_after", DEFAULT_STALE_AFTER))
    if age > limit:
        return f"no heartbeat for {age:.0f} s (stale after {limit:.0f} s)"
    return None


def _refusal(where: str, rec: Dict) -> RunLockError:
    return RunLockError(
        f"{where} is in use by another live run: {describe(rec)}. Two trainers on one run would interleave its logs "
        f"and overwrite its checkpoints. Wait for that run to end (or stop it), or use another --name. A run that "
        f"died without removing its lock is taken over automatically once its heartbeat is "
        f"{float(rec.get('stale_after', DEFAULT_STALE_AFTER)):.0f} s old.")


class LocalLock:
    """``run.lock`` in a local or shared-filesystem folder (see the module docstring)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.record: Optional[Dict] = None

    @property
    def where(self) -> str:
        return self.path

    def _read(self, path: Optional[str] = None) -> Optional[Dict]:
        try:
            with open(path or self.path) as f:
                rec = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # being written, or damaged
        return rec if isinstance(rec, dict) else {}

    def _write_new(self, rec: Dict) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(rec))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk: leave no empty lock behind for the next start to wait on
            os.unlink(self.path)
            raise RunLockError(f"cannot write the run lock {self.path}: {exc}") from exc
        return True

    def acquire(self, me: Dict) -> Optional[str]:
        """Take the lock; returns what was taken over (None if the lock was free). Raises RunLockError."""
        os.makedirs(self.folder, exist_ok=True)
        took_over = None
        unreadable = 0
        for _ in range(100):
            if self._write_new(me):
                self.record = me
                return took_over
            rec = self._read()
            if rec is None:
                continue  # released meanwhile
            if not rec:  # being written (give the writer a moment) or damaged: then judged by its file time
                unreadable += 1
                if unreadable < 5:
                    time.sleep(0.2)
                    continue
                try:
                    rec = {"heartbeat": os.stat(self.path).st_mtime, "token": None}
                except FileNotFoundError:
                    continue
            why = stale_reason(rec, me)
            if why is None:
                raise _refusal(self.path, rec)
            grave = f"{self.path}.stale-{me['token']}"
            try:
                os.rename(self.path, grave)
            except FileNotFoundError:
                continue
            moved = self._read(grave)
            if moved is not None and moved.get("token") != rec.get("token"):
                # someone replaced the stale record between our read and our rename: put theirs back
                try:
                    os.link(grave, self.path)
                except FileExistsError:
                    pass
                os.unlink(grave)
                continue
            os.unlink(grave)
            took_over = f"{describe(rec)}: {why}"
        raise RunLockError(f"{self.path}: could not take the lock (it changed hands 100 times)")

    def beat(self) -> None:
        """Renew the heartbeat; raises RunLockError when the lock is no longer ours."""
        self.verify()
        self.record = {**self.record, "heartbeat": time.time()}
        tmp = f"{self.path}.beat-{self.record['token']}"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.record))
        os.replace(tmp, self.path)

    def verify(self) -> None:
        rec = self._read()
        if not rec or rec.get("token") != self.record["token"]:
            now = f"now {describe(rec)}" if rec else "the lock file is gone"
            raise RunLockError(f"{self.path}: this run no longer holds its lock ({now})")

    def release(self) -> None:
        rec = self._read()
        if self.record and rec and rec.get("token") == self.record["token"]:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.record = None


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 conditional write refused (412 PreconditionFailed / 409 ConditionalRequestConflict)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = f"{type(exc).__name__} {exc}".lower()
        if "precondition" in text or "pre-condition" in text or "conditionalrequestconflict" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ObjectLease:
    """``run.lease`` in a remote checkpoint folder, renewed and taken over by compare-and-swap on its ETag."""

    def __init__(self, folder_url: str):
        self.url = posixpath.join(folder_url.rstrip("/"), LEASE_NAME)
        self.fs, self.key = fsspec.core.url_to_fs(self.url)
        self.record: Optional[Dict] = None
        self.etag: Optional[str] = None

    @property
    def where(self) -> str:
        return self.url

    def _read(self):
        try:
            info = self.fs.info(self.key, refresh=True)
            data = self.fs.cat_file(self.key)
        except FileNotFoundError:
            return None, None
        try:
            rec = json.loads(data)
        except ValueError:
            rec = {}
        return rec, info.get("ETag")

    def _put(self, rec: Dict, **cond) -> bool:
        try:
            out = self.fs.pipe_file(self.key, json.dumps(rec).encode(), **cond)
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        self.etag = (out or {}).get("ETag") if isinstance(out, dict) else None
        if self.etag is None:
            self.etag = self.fs.info(self.key, refresh=True).get("ETag")
        return True

    def acquire(self, me: Dict) -> Optional[str]:
        took_over = None
        for _ in range(100):
            if self._put(me, mode="create"):
                self.record = me
                return took_over
            rec, etag = self._read()
            if rec is None:
                continue
            if not rec:
                rec = {"heartbeat": 0, "token": None}
            why = stale_reason(rec, me)
            if why is None:
                raise _refusal(self.url, rec)
            if self._put(me, IfMatch=etag):
                self.record = me
                return f"{describe(rec)}: {why}"
        raise RunLockError(f"{self.url}: could not take the lease (it changed hands 100 times)")

    def beat(self) -> None:
        self.record = {**self.record, "heartbeat": time.time()}
        if not self._put(self.record, IfMatch=self.etag):
            rec, _ = self._read()
            raise RunLockError(f"{self.url}: this run no longer holds its lease "
                               f"({'now ' + describe(rec) if rec else 'the lease is gone'})")

    def verify(self) -> None:
        rec, etag = self._read()
        if not rec or rec.get("token") != self.record["token"]:
            raise RunLockError(f"{self.url}: this run no longer holds its lease "
                               f"({'now ' + describe(rec) if rec else 'the lease is gone'})")

    def release(self) -> None:
        try:
            rec, _ = self._read()
            if self.record and rec and rec.get("token") == self.record["token"]:
                self.fs.rm_file(self.key)
        except OSError as exc:  # the object store is down: the lease goes stale by itself
            logging.warning("could not remove %s: %s", self.url, exc)
        self.record = None


class RunLocks:
    """The locks of one run (its folder, a separate local checkpoint folder, a remote checkpoint folder's lease),
    with one heartbeat thread. ``on_lost(reason)`` is called (from that thread) if another process took one."""

    def __init__(self, locks: List, stale_after: float = DEFAULT_STALE_AFTER, run: str = ""):
        if stale_after <= 0:
            raise ValueError("stale_after must be > 0 seconds")
        self.locks = locks
        self.stale_after = float(stale_after)
        self.run = run
        self.on_lost: Optional[Callable[[str], None]] = None
        self.lost: Optional[str] = None
        self.took_over: List[str] = []  # what acquire() took from stale owners, for the caller to log
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> "RunLocks":
        me = owner_record(self.run, self.stale_after)
        taken: List = []
        try:
            for lock in self.locks:
                took = lock.acquire(me)
                taken.append(lock)
                if took:
                    self.took_over.append(f"took over {lock.where} from a stale owner ({took})")
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        self._thread = threading.Thread(target=self._heartbeat, name="patentclip-run-lock", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        interval = self.stale_after / 4
        while not self._stop.wait(interval):
            for lock in self.locks:
                try:
                    lock.beat()
                except RunLockError as exc:
                    self.lost = str(exc)
                    logging.error("%s", exc)
                    if self.on_lost is not None:
                        self.on_lost(str(exc))
                    return
                except OSError as exc:  # a shared filesystem or object store hiccup: try again next time
                    logging.warning("could not renew %s: %s", lock.where, exc)

    def verify(self) -> None:
        """Raise RunLockError unless this process still holds every lock (the checkpoint commit's fence)."""
        if self.lost:
            raise RunLockError(self.lost)
        for lock in self.locks:
            lock.verify()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for lock in self.locks:
            if lock.record is not None:
                lock.release()
