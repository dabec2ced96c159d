"""Where the real data the tests and benchmarks read lives (never committed: licences, size)."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def realdata_dir() -> Path:
    """``$PATENTCLIP_REALDATA``, else ``<repository root>/../shared/realdata`` (CI's layout), else
    ``/work/shared/realdata`` (a git worktree on the development machine, whose sibling has no shared/). Raises
    FileNotFoundError naming the places looked at when none exists."""
    tried = []
    for cand in (os.environ.get("PATENTCLIP_REALDATA"), REPO_ROOT.parent / "shared" / "realdata",
                 "/work/shared/realdata"):
        if cand:
            tried.append(str(cand))
            if Path(cand).is_dir():
                return Path(cand)
    raise FileNotFoundError("real data not found; looked in " + ", ".join(tried) + " (set PATENTCLIP_REALDATA)")
