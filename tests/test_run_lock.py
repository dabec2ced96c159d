"""One owner per run (launch/runlock.py): real lock files, real processes, a real S3 server for the lease."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from patentclip.launch.runlock import LEASE_NAME, LOCK_NAME, LocalLock, ObjectLease, RunLockError, RunLocks

HOLDER = """
import sys, time
from patentclip.launch.runlock import LocalLock, RunLocks
RunLocks([LocalLock(sys.argv[1])], stale_after=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""

RACER = """
import os, sys, time
from patentclip.launch.runlock import LocalLock, RunLockError, RunLocks
folder, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.005)
try:
    locks = RunLocks([LocalLock(folder)], stale_after=60).acquire()
    print("won", flush=True)
    time.sleep(3)  # hold it while the others try
    locks.release()
except RunLockError as exc:
    print("refused", exc, flush=True)
"""


def start_holder(folder, stale_after=60):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(stale_after)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def stale_record(host="node-17", pid=4242, age=300.0, **kw):
    now = time.time()
    return {"run": "r", "host": host, "pid": pid, "job": None, "restart": None, "token": "t" * 32,
            "started": now - age, "heartbeat": now - age, "stale_after": 120.0, **kw}


def test_a_live_owner_is_refused_and_a_killed_one_is_taken_over(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunLockError) as err:
            RunLocks([LocalLock(str(tmp_path))]).acquire()
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "in use by another live run" in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # kill -9 leaves the lock behind
    locks = RunLocks([LocalLock(str(tmp_path))]).acquire()
    assert f"its process {holder.pid} on this host is gone" in locks.took_over[0]
    rec = json.loads((tmp_path / LOCK_NAME).read_text())
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
    locks.verify()
    locks.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no stale or heartbeat files left behind


def test_another_hosts_owner_is_live_until_its_heartbeat_is_stale(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps(stale_record(age=10)))
    with pytest.raises(RunLockError, match=r"host node-17 pid 4242, last heartbeat 1\d s ago"):
        RunLocks([LocalLock(str(tmp_path))]).acquire()
    lock.write_text(json.dumps(stale_record(age=300)))
    locks = RunLocks([LocalLock(str(tmp_path))]).acquire()
    assert "no heartbeat for 300 s (stale after 120 s)" in locks.took_over[0]
    locks.release()


def test_a_requeued_slurm_job_takes_over_from_its_earlier_run(tmp_path, monkeypatch):
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale_record(age=1, job="4711", restart="0")))
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    locks = RunLocks([LocalLock(str(tmp_path))]).acquire()
    assert "earlier run of this SLURM job 4711" in locks.took_over[0]
    locks.release()
    # another job with the same run name is refused while it is live
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale_record(age=1, job="4700", restart=None)))
    with pytest.raises(RunLockError, match="SLURM job 4700"):
        RunLocks([LocalLock(str(tmp_path))]).acquire()


def test_simultaneous_takeovers_of_a_stale_lock_have_exactly_one_winner(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps(stale_record(age=1000)))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(go)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    time.sleep(2.0)  # all of them imported and waiting
    go.write_text("")
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sum(o.startswith("won") for o in outs) == 1, outs
    assert all(o.startswith(("won", "refused")) for o in outs), outs
    assert [p.name for p in folder.iterdir()] == []  # the winner released it; no stale-* files left


def test_heartbeat_renews_the_lock_and_notices_a_takeover(tmp_path):
    locks = RunLocks([LocalLock(str(tmp_path))], stale_after=0.4).acquire()
    lost = []
    locks.on_lost = lost.append
    first = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
    time.sleep(0.35)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] > first
    # another process took the run over (this one was paused longer than stale_after)
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale_record(age=0, host="node-3")))
    deadline = time.time() + 5
    while not lost and time.time() < deadline:
        time.sleep(0.05)
    assert lost and "no longer holds its lock" in lost[0] and "host node-3" in lost[0]
    with pytest.raises(RunLockError, match="no longer holds"):
        locks.verify()
    locks.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "node-3"  # not removed: not ours


@pytest.fixture()
def s3env(s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    s3_server.make_bucket("leases")
    return s3_server


def test_object_store_lease_refuses_a_live_owner_and_swaps_out_a_stale_one(s3env):
    fs = s3env.filesystem()
    url = "s3://leases/run-a"
    a = RunLocks([ObjectLease(url)], stale_after=60).acquire()
    rec = json.loads(fs.cat_file(f"leases/run-a/{LEASE_NAME}"))
    assert rec["pid"] == os.getpid()
    with pytest.raises(RunLockError, match=f"{url}/{LEASE_NAME} is in use by another live run"):
        RunLocks([ObjectLease(url)]).acquire()
    # the owner goes silent: its record is stale; a new owner replaces it by compare-and-swap on the ETag
    a._stop.set()
    fs.pipe_file(f"leases/run-a/{LEASE_NAME}", json.dumps(stale_record(age=500, host="node-9")).encode())
    b = RunLocks([ObjectLease(url)], stale_after=60).acquire()
    assert "took over" in b.took_over[0] and "host node-9" in b.took_over[0]
    # the old owner's renewal fails: its ETag is not the object's any more
    with pytest.raises(RunLockError, match="no longer holds its lease"):
        a.locks[0].beat()
    with pytest.raises(RunLockError):
        a.locks[0].verify()
    b.verify()
    b.release()
    assert not fs.exists(f"leases/run-a/{LEASE_NAME}")
    # a stale lease swapped out by two starters at once: the ETag admits one of them
    fs.pipe_file(f"leases/run-a/{LEASE_NAME}", json.dumps(stale_record(age=500)).encode())
    x, y = ObjectLease(url), ObjectLease(url)
    rec, etag = x._read()
    assert x._put({**rec, "token": "x"}, IfMatch=etag) is True
    assert y._put({**rec, "token": "y"}, IfMatch=etag) is False
