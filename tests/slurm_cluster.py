"""A real single-node SLURM cluster for the tests: Debian's slurm-wlm (slurmctld + slurmd) and munge, started by
hand (no systemd, no cgroups), everything under one state folder, loopback only.

    python tests/slurm_cluster.py install      # apt-get install the packages (idempotent; root)
    python tests/slurm_cluster.py up DIR       # write the config under DIR, start munged/slurmctld/slurmd
    python tests/slurm_cluster.py down DIR

In pytest: the ``slurm_cluster`` fixture (conftest.py) installs, starts and stops it; ``cluster.env()`` gives
``SLURM_CONF`` for sbatch/scontrol. Node CPUs and memory are declared from this machine; requeue is fast
(``cred_expire=30``, ``sched_interval=5``) so preemption tests finish in about a minute.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def installed() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))


def install() -> None:
    """apt-get install slurm-wlm's daemons, client and munge, without starting them."""
    if installed():
        return
    if os.geteuid() != 0:
        raise RuntimeError("installing SLURM needs root (apt-get)")
    policy = Path("/usr/sbin/policy-rc.d")
    had_policy = policy.exists()
    if not had_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env,
                           check=True, capture_output=True)
    finally:
        if not had_policy:
            policy.unlink()


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _ensure_resolvable(name: str) -> None:
    try:
        socket.gethostbyname(name)
    except OSError:
        with open("/etc/hosts", "a") as f:
            f.write(f"\n127.0.0.1 {name}\n")


class SlurmCluster:
    """``gpus``: GPUs the node declares (gres ``gpu``, backed by character devices like /dev/null), so that scripts
    with ``#SBATCH --gpus-per-task`` / ``--gpus-per-node`` are accepted as written; the jobs run on the CPU."""

    def __init__(self, root: str, cpus: int = 0, memory_mb: int = 0, gpus: int = 0):
        self.root = Path(root)
        self.node = _short_hostname()
        self.cpus = cpus or max(2, os.cpu_count() or 2)
        self.memory_mb = memory_mb or 4096
        self.gpus = gpus
        self.conf = self.root / "slurm.conf"

    def env(self) -> Dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for d in ("state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        gres = ""
        if self.gpus:
            (r / "dev").mkdir(exist_ok=True)
            files = []
            for i in range(self.gpus):
                dev = r / "dev" / f"fakegpu{i}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
                files.append(str(dev))
            (r / "gres.conf").write_text("".join(f"NodeName={self.node} Name=gpu File={f}\n" for f in files))
            gres = f" Gres=gpu:{self.gpus}"
        self.conf.write_text(f"""\
ClusterName=patentclip-test
{"GresTypes=gpu" if self.gpus else ""}
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=30
CredType=cred/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmdParameters=config_overrides
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}{gres} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")

    def _munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)

    def up(self, timeout: float = 60) -> "SlurmCluster":
        install()
        _ensure_resolvable(self.node)
        self.write_config()
        self._munge()
        env = {**os.environ, **self.env()}
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=env)
        subprocess.run(["slurmd", "-f", str(self.conf), "-N", self.node], check=True, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run(["scontrol", "show", "node", self.node], capture_output=True, text=True, env=env)
            if "State=IDLE" in r.stdout:
                return self
            time.sleep(0.5)
        raise TimeoutError(f"SLURM node {self.node} not IDLE after {timeout} s:\n{r.stdout}{r.stderr}\n"
                           + (self.root / "log" / "slurmctld.log").read_text()[-2000:])

    def down(self) -> None:
        env = {**os.environ, **self.env()}
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=env)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            p = self.root / "run" / pid_file
            if p.exists():
                try:
                    os.kill(int(p.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)

    def sbatch(self, *args, env_extra=None, timeout=900) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env(), **(env_extra or {})}
        return subprocess.run(["sbatch", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)

    def scontrol(self, *args) -> str:
        env = {**os.environ, **self.env()}
        return subprocess.run(["scontrol", *map(str, args)], capture_output=True, text=True, env=env).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "up"
    if cmd == "install":
        install()
    elif cmd == "up":
        c = SlurmCluster(sys.argv[2] if len(sys.argv) > 2 else "/tmp/patentclip-slurm").up()
        print(f"export SLURM_CONF={c.conf}")
    elif cmd == "down":
        SlurmCluster(sys.argv[2] if len(sys.argv) > 2 else "/tmp/patentclip-slurm").down()
