"""The build report of ``patentclip-shards build``: the per-shard stats sidecars assembled into
``build_report.json`` (counts, problems sorted by source and line, class histogram, views, dates), the
``classes.json`` rows, and the human summary ``build_report.txt``."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple


def _problem_sort_key(p: Dict) -> Tuple:
    return (p.get("source") or "", p.get("line") or 0, p.get("drawing") or 0, p.get("kind") or "", p.get("reason"))


def classes_rows(codes, class_name, counts, categories) -> List[Dict]:
    return [{"id": i, "code": c, "name": class_name[c], "count": int(counts.get(c, 0)), "category": categories[c]}
            for i, c in enumerate(codes)]


def assemble_report(jobs, results, names, codes, class_name, categories, problems, in_stats) -> Dict:
    all_problems = list(problems)
    counts_by_split: Dict[str, Counter] = {n: Counter() for n in names}
    views: Dict[str, Counter] = {n: Counter() for n in names}
    dates: Dict[str, List] = {n: [] for n in names}
    drawings_written = {n: 0 for n in names}
    shards: Dict[str, List[str]] = {n: [] for n in names}
    bytes_written = 0
    records_written = 0
    for j in jobs:
        st = results[(j.split, j.index)]
        all_problems.extend(st["problems"])
        counts_by_split[j.split].update(st["class_counts"])
        views[j.split].update(st["views"])
        dates[j.split] += [d for d in (st["date_min"], st["date_max"]) if d]
        drawings_written[j.split] += st["count"]
        if st["count"]:
            shards[j.split].append(st["name"])
        bytes_written += st["bytes"]
        records_written += st["records_written"]
    all_problems.sort(key=_problem_sort_key)
    all_counts = sum(counts_by_split.values(), Counter())
    skipped = [p for p in all_problems if p["scope"] in ("record", "drawing")]
    repairs = [p for p in all_problems if p["scope"] == "repair"]
    return {
        "records_read": in_stats.get("patents_read", 0),
        "rows_read": in_stats.get("rows_read", 0),
        "records_written": records_written,
        "records_skipped": [p for p in all_problems if p["scope"] == "record"],
        "drawings_written": drawings_written,
        "drawings_written_total": sum(drawings_written.values()),
        "drawings_skipped": [p for p in all_problems if p["scope"] == "drawing"],
        "skipped_by_reason": dict(sorted(Counter(p["kind"] for p in skipped).items())),
        "repairs": repairs,
        "repaired_by_reason": dict(sorted(Counter(p["kind"] for p in repairs).items())),
        "notes": [p for p in all_problems if p["scope"] == "note"],
        "shards": shards,
        "bytes_written": bytes_written,
        "class_histogram": {f"{c} {class_name[c]}": int(all_counts.get(c, 0)) for c in codes},
        "class_counts_by_split": {n: {c: int(counts_by_split[n].get(c, 0)) for c in codes} for n in names},
        "categories": {c: categories[c] for c in codes},
        "views": {n: dict(sorted(views[n].items())) for n in names},
        "date_range": {n: ([min(dates[n]), max(dates[n])] if dates[n] else None) for n in names},
        "_all_counts": all_counts,
    }


def summary(report: Dict) -> str:
    """A short human summary of a build report."""
    lines = [f"records written: {report['records_written']} of {report['records_read']} read"
             + (f" ({report['rows_read']} input rows)" if report.get("rows_read") not in (None, report["records_read"])
                else "")]
    for split, n in report["drawings_written"].items():
        dr = (report.get("date_range") or {}).get(split)
        lines.append(f"  {split}: {n} drawings in {len(report['shards'][split])} shards"
                     + (f", granted {dr[0]} .. {dr[1]}" if dr else ""))
    lines.append(f"bytes written: {report['bytes_written']:,}")
    if "shards_reused" in report:
        lines.append(f"shards: {report['shards_written']} written, {report['shards_reused']} complete from an earlier "
                     f"run" + (f", {len(report['stale_shards_removed'])} stale removed"
                               if report.get("stale_shards_removed") else ""))
    if report.get("elapsed_s") is not None:
        lines.append(f"time: {report['elapsed_s']:.1f} s ({report.get('drawings_per_s', 0):.1f} drawings/s, "
                     f"{report.get('workers', 1)} workers)")
    hist = report.get("class_histogram") or {}
    if hist:
        cats = report.get("categories") or {}
        lines.append(f"classes: {len(hist)}")
        for k, v in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))[:15]:
            lines.append(f"  {v:8d}  {k}" + (f"  [{cats.get(k.split(' ', 1)[0])}]" if cats else ""))
        if len(hist) > 15:
            lines.append(f"  ... {len(hist) - 15} more in build_report.json")
    lines.extend(report.get("importer_summary") or [])
    if report.get("captions"):
        c = report["captions"]
        lines.append(f"captions file: {c['drawings_matched']} drawings matched, {c['keys_unmatched']} keys unmatched")
    skipped = report["records_skipped"] + report["drawings_skipped"]
    if skipped:
        lines.append(f"skipped: {len(report['records_skipped'])} records, {len(report['drawings_skipped'])} drawings "
                     f"({', '.join(f'{k}: {v}' for k, v in sorted(report['skipped_by_reason'].items()))})")
        for p in skipped[:20]:
            lines.append(f"  {p['reason']}")
        if len(skipped) > 20:
            lines.append(f"  ... {len(skipped) - 20} more in build_report.json")
    if report.get("repairs"):
        lines.append(f"repaired and kept: {len(report['repairs'])} "
                     f"({', '.join(f'{k}: {v}' for k, v in sorted(report['repaired_by_reason'].items()))})")
        for p in report["repairs"][:10]:
            lines.append(f"  {p['reason']}")
        if len(report["repairs"]) > 10:
            lines.append(f"  ... {len(report['repairs']) - 10} more in build_report.json")
    if report.get("notes"):
        lines.append(f"notes on auxiliary inputs: {len(report['notes'])}")
        for p in report["notes"][:10]:
            lines.append(f"  {p['reason']}")
    return "\n".join(lines)
