"""Peak memory of a benchmark's process tree: the sum of PSS (else RSS) over a process and its descendants from
Linux /proc, sampled in a thread while the benchmark runs (``peak_tree_pss_mb`` of benchmarks/run_all.py)."""
from __future__ import annotations

import os
import threading
from typing import Dict, List

from _machine import read_text


def _children_map() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        stat = read_text(f"/proc/{d}/stat")
        try:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    return children


def tree_pss_mb(root: int) -> float:
    """Sum of PSS (else RSS) over ``root`` and its descendants, in MB (Linux /proc; 0 elsewhere)."""
    if not os.path.isdir("/proc"):
        return 0.0
    children = _children_map()
    total_kb, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, []))
        kb = None
        for line in read_text(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                kb = int(line.split()[1])
                break
        if kb is None:
            statm = read_text(f"/proc/{pid}/statm").split()
            kb = int(statm[1]) * os.sysconf("SC_PAGE_SIZE") // 1024 if len(statm) > 1 else 0
        total_kb += kb
    return total_kb / 1024


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, tree_pss_mb(self.pid))
            except Exception:  # a process vanishing mid-scan; never let sampling break the run
                pass
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()
