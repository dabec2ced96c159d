"""What a caption run generated, filtered and retried: part statistics, the merged captions file, the summary.

Each committed part has ``part-P.stats.json`` (:func:`part_stats`, made from its journal, so a part resumed after
a kill counts every drawing once). :func:`merge` concatenates the parts into ``captions.jsonl`` and sums their
statistics, with the runs' timings (``OUT/runs/*.json``, one per worker process), into ``caption_report.json``
and the human ``caption_report.txt``:

* drawings: captioned with at least ``min_captions`` captions (``ok``), with fewer (``below_min``, listed), failed
  (no caption, unreadable drawing: listed with the reason);
* captions kept, and candidates dropped by reason (:mod:`.parsing`), descriptions repaired or unused;
* language-model answers per drawing (re-asks of drawings below ``min_captions``), endpoint retries by status;
* tokens and cost per stage, and per run: wall time, time inside the models' generate calls, and the share of
  time outside them (the project's plumbing).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from .engines import EngineStats
from .work import CAPTIONS_FILE, RUNS_DIR, PartStore, Plan, atomic_write

REPORT_JSON = "caption_report.json"
REPORT_TXT = "caption_report.txt"
LIST_LIMIT = 1000


def part_stats(p: int, plan: Plan, entries: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Statistics of a part from its journal entries (in input order)."""
    status = Counter(e["status"] for e in entries)
    failed_by = Counter(e.get("kind") for e in entries if e["status"] == "failed")
    dropped: Counter = Counter()
    desc: Counter = Counter()
    answers: Counter = Counter()
    tokens: Dict[str, List[int]] = {}
    kept = retries = 0
    for e in entries:
        n = e.get("n") or {}
        dropped.update(n.get("dropped") or {})
        if n.get("description"):
            desc[n["description"]] += 1
        answers[str(n.get("llm_answers", 0))] += 1
        kept += n.get("kept", 0)
        retries += n.get("retries", 0)
        for stage, (pt, ct) in (n.get("tokens") or {}).items():
            a = tokens.setdefault(stage, [0, 0])
            a[0] += pt
            a[1] += ct
    start, end = plan.part_range(p)
    return {"part": p, "fingerprint": plan.fingerprint, "range": [start, end], "drawings": len(entries),
            "ok": status["ok"], "below_min": status["below_min"], "failed": status["failed"],
            "failed_by_kind": dict(sorted(failed_by.items())), "captions": kept,
            "dropped_by_reason": dict(sorted(dropped.items())), "descriptions": dict(sorted(desc.items())),
            "llm_answers": dict(sorted(answers.items(), key=lambda kv: int(kv[0]))), "retries": retries,
            "tokens": tokens,
            "below_min_keys": [e["key"] for e in entries if e["status"] == "below_min"],
            "failed_list": [{"key": e["key"], "kind": e.get("kind"), "reason": e.get("reason")}
                            for e in entries if e["status"] == "failed"],
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _sum_counts(a: Dict[str, int], b: Dict[str, int]) -> Dict[str, int]:
    c = Counter(a)
    c.update(b)
    return dict(sorted(c.items()))


def read_runs(out_dir) -> List[Dict[str, Any]]:
    runs = []
    for f in sorted((Path(out_dir) / RUNS_DIR).glob("*.json")):
        try:
            runs.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return runs


def totals(stats: List[Dict[str, Any]], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The sums over parts and runs (module docstring)."""
    t: Dict[str, Any] = {"drawings": 0, "ok": 0, "below_min": 0, "failed": 0, "captions": 0, "retries": 0,
                         "failed_by_kind": {}, "dropped_by_reason": {}, "descriptions": {}, "llm_answers": {},
                         "tokens": {}, "below_min_keys": [], "failed_list": []}
    for st in stats:
        for k in ("drawings", "ok", "below_min", "failed", "captions", "retries"):
            t[k] += st.get(k, 0)
        for k in ("failed_by_kind", "dropped_by_reason", "descriptions", "llm_answers"):
            t[k] = _sum_counts(t[k], st.get(k) or {})
        for stage, (pt, ct) in (st.get("tokens") or {}).items():
            a = t["tokens"].setdefault(stage, [0, 0])
            a[0] += pt
            a[1] += ct
        t["below_min_keys"].extend(st.get("below_min_keys") or [])
        t["failed_list"].extend(st.get("failed_list") or [])
    t["below_min_keys"] = t["below_min_keys"][:LIST_LIMIT]
    t["failed_list"] = t["failed_list"][:LIST_LIMIT]
    t["candidates"] = t["captions"] + sum(v for k, v in t["dropped_by_reason"].items() if k != "surplus")
    engines: Dict[str, Dict[str, Any]] = {}
    for r in runs:
        for name, es in (r.get("engines") or {}).items():
            engines[name] = EngineStats.add(engines.get(name, {}), es)
    t["engines"] = engines
    t["cost"] = round(sum(e.get("cost", 0) for e in engines.values()), 6)
    t["runs"] = [{k: r.get(k) for k in ("worker", "host", "pid", "started", "wall_seconds", "generate_seconds",
                                        "plumbing_share", "drawings_generated", "drawings_per_s", "parts_committed",
                                        "stopped", "open_errors")} for r in runs]
    return t


def merge(out_dir, plan: Plan) -> Dict[str, Any]:
    """Write ``captions.jsonl`` and the reports from the committed parts (all parts must be done)."""
    out = Path(out_dir)
    store = PartStore(out)
    missing = [p for p in range(plan.num_parts) if not store.is_done(p, plan.fingerprint)]
    if missing:
        raise ValueError(f"{len(missing)} of {plan.num_parts} parts are not done (first: part {missing[0]}); run "
                         "patentclip-caption run again to finish them")
    final = out / CAPTIONS_FILE
    tmp = final.with_name(f".{final.name}.tmp-{time.time_ns()}")
    stats = [store.stats(p) for p in range(plan.num_parts)]
    with open(tmp, "wb") as f:
        for p in range(plan.num_parts):
            with open(store.path(p, ".jsonl"), "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(final)
    lines = sum(st["ok"] + st["below_min"] for st in stats)
    report = {"captions_file": str(final), "lines": lines, "plan": plan.to_dict(),
              "totals": totals(stats, read_runs(out)), "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(out / "caption_report.json", json.dumps(report, indent=1, ensure_ascii=False).encode("utf-8"))
    atomic_write(out / "caption_report.txt", (summary(report) + "\n").encode("utf-8"))
    return report


def _pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def summary(report: Dict[str, Any]) -> str:
    """A short human summary of :func:`merge`'s report."""
    t = report["totals"]
    s = report["plan"]["settings"]
    lines = [f"captions file: {report['captions_file']} ({report['lines']} drawings)",
             f"drawings: {t['drawings']}: {t['ok']} with >= {s['caption']['min_captions']} captions, "
             f"{t['below_min']} with fewer (listed in caption_report.json), {t['failed']} failed"
             + (f" ({', '.join(f'{k}: {v}' for k, v in t['failed_by_kind'].items())})" if t['failed'] else ""),
             f"captions kept: {t['captions']} ({t['captions'] / max(1, t['ok'] + t['below_min']):.1f} per drawing)"
             f" of {t['candidates']} generated"]
    if t["dropped_by_reason"]:
        lines.append("dropped: " + ", ".join(f"{k} {v} ({_pct(v, t['candidates'])})"
                                              for k, v in t["dropped_by_reason"].items()))
    if t["descriptions"]:
        lines.append("descriptions: " + ", ".join(f"{k} {v}" for k, v in t["descriptions"].items()))
    if len(t["llm_answers"]) > 1 or "1" not in t["llm_answers"]:
        lines.append("language-model answers per drawing: " + ", ".join(f"{k}: {v}" for k, v in
                                                                        t["llm_answers"].items()))
    for name, e in t["engines"].items():
        retried = e.get("retried_by_status") or {}
        lines.append(f"{name}: {e.get('requests', 0)} requests, {e.get('prompt_tokens', 0):,} prompt + "
                     f"{e.get('completion_tokens', 0):,} completion tokens"
                     + (f", cost {e['cost']:.4f}" if e.get("cost") else "")
                     + (f", {e.get('retries', 0)} retries ({', '.join(f'{k}: {v}' for k, v in retried.items())})"
                        if e.get("retries") else "") + (f", {e['errors']} errors" if e.get("errors") else ""))
    for r in t["runs"]:
        if r.get("drawings_generated"):
            lines.append(f"run {r['worker']} on {r['host']}: {r['drawings_generated']} drawings in "
                         f"{r['wall_seconds']:.1f} s ({r['drawings_per_s']:.2f}/s), {r['generate_seconds']:.1f} s in "
                         f"generate, outside generate {100 * (r['plumbing_share'] or 0):.1f}% of it"
                         + (f", stopped by {r['stopped']}" if r.get("stopped") else ""))
    return "\n".join(lines)


def status(out_dir) -> Optional[Dict[str, Any]]:
    """Parts done / open (with a journal) / not started of the run in ``out_dir`` (``None`` when there is none)."""
    out = Path(out_dir)
    f = out / "plan.json"
    if not f.exists():
        return None
    plan_d = json.loads(f.read_text(encoding="utf-8"))
    store = PartStore(out)
    done, open_, fresh, journaled = [], [], [], 0
    for p in range(plan_d["parts"]):
        st = store.stats(p)
        if store.path(p, ".jsonl").exists() and st and st.get("fingerprint") == plan_d["fingerprint"]:
            done.append(p)
        elif store.path(p, ".journal").exists():
            open_.append(p)
            with open(store.path(p, ".journal"), "rb") as fh:
                journaled += sum(1 for ln in fh if ln.endswith(b"\n"))
        else:
            fresh.append(p)
    drawings_done = sum(store.stats(p)["drawings"] for p in done)
    return {"plan": plan_d, "parts_done": len(done), "parts_open": open_, "parts_not_started": len(fresh),
            "drawings_done": drawings_done + journaled, "merged": (out / CAPTIONS_FILE).exists()}
