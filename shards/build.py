"""Build WebDataset shards (``patentclip-shards build``): plan, encode in parallel, write atomically, resume.

One sample per drawing (the format: shards/sample_format.py)::

    <patent_id>_<NN>.png | .jpg | .webp   the drawing, normalised (docs/manifest.md, "Images")
    <patent_id>_<NN>.txt                  its first caption (what vanilla open_clip trains on)
    <patent_id>_<NN>.json                 patent_id, drawing_index, num_drawings, view, class_id, class_code,
                                          class_name, category, grant_date, title, captions (all), orig_size [w, h],
                                          size [w, h] (+ object and the input's other fields)
    <patent_id>_<NN>.cls                  the class id, ASCII decimal

How a build runs:

1. **Read** the input (the manifest, or an importer: :mod:`.importers`) into :class:`PatentRecord` s; bad records
   are reported and skipped.
2. **Plan** every shard from the records alone: class ids (sorted codes), head/tail categories, the split of each
   patent (a seeded hash of its id against the fractions, or its grant date against ``split_date``), the order of
   the patents in a split (a seeded hash), and the patents of each shard (a patent is never split; a shard is
   closed before a patent that would overflow ``samples_per_shard`` unless it is empty). The plan does not depend
   on the number of workers, so neither do the shards (byte for byte).
3. **Encode** each shard as an independent job (``workers`` processes): decode and normalise its drawings, join
   and clean captions, write the tar to a temporary name and then rename it (local) or upload it to its final key
   (any fsspec URL; an S3 PUT or multipart upload appears only when complete), then write the shard's stats
   sidecar ``.build/<split>/<name>.json`` (counts, bytes, sha256, problems, the job's fingerprint).
4. **Resume**: a shard whose sidecar has the job's fingerprint and whose file has the recorded size is complete
   and is not rebuilt; anything else (a partial temp file, a shard without sidecar, a changed input) is rebuilt.
5. **Report**: ``sizes.json`` and ``classes.json`` per split, ``classes.json``, ``build_report.json`` and the human
   ``build_report.txt`` in the output folder, from the sidecars (so a resumed build reports everything).

Head/tail categories (LLM-informed paper, Figure 1; the rule: :mod:`patentclip.shards.head_tail`): the classes are
ranked by their number of planned drawings over all splits (ties by code); the top 40 % of the classes (rounded
up) are ``head``, the rest ``tail``.

This module runs the build (flags checked, steps in order, the report files written) and finds a split's shards
(:func:`shard_pattern`); the steps have a module each: the plan :mod:`.build_plan`, the shard job
:mod:`.shard_writer`, the output location :mod:`.output`, the report :mod:`.build_report`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import multiprocessing as mp
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import fsspec
from tqdm import tqdm

from patentclip.plugins.remote_io import is_remote

from .build_plan import BuildSettings, assign_split, head_tail_categories, plan_shards, shard_fingerprint
from .build_report import assemble_report, classes_rows, summary
from .captions import (DEFAULT_MAX_CHARS, DEFAULT_TEMPLATES, JOIN_MODES, CaptionIndex, load_templates,
                       parse_templates)
from .contact_sheet import write_contact_sheet
from .images import DEFAULT_MAX_SIDE, ImageOptions
from .importers import ImportOptions, canonical_patent_key, import_records
from .manifest import PatentRecord, Problem
from .output import Output
from .pool import ignore_sigint
from .shard_writer import BUILD_DIR, commit_staged, run_job, run_job_star

_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{6})\.tar$")


def build_shards(manifest_path, out_dir, *, samples_per_shard: int = 1000,
                 splits: Sequence[Tuple[str, float]] = (("train", 0.8), ("val", 0.2)), seed: int = 0,
                 image_format: str = "png", progress: bool = True, workers: int = 1, input_format: str = "manifest",
                 import_options: Optional[ImportOptions] = None, split_date: Optional[str] = None,
                 query_split: str = "query", max_side: int = DEFAULT_MAX_SIDE, image_mode: str = "L",
                 quality: Optional[int] = None, captions: Optional[str] = None, captions_join: str = "replace",
                 templates: Optional[Sequence[str]] = None, templates_file: Optional[str] = None,
                 max_caption_chars: int = DEFAULT_MAX_CHARS, storage_options: Optional[Dict[str, Any]] = None,
                 resume: bool = True, contact_sheet: int = 0) -> Dict:
    """Build shards; returns the build report (also written to ``out_dir/build_report.json``).

    Args:
        manifest_path: the input file (or a list of files for the importers that take several).
        out_dir: a local folder or any fsspec URL (``s3://bucket/prefix``).
        samples_per_shard: maximum drawings per shard (a patent is never split).
        splits: ``(name, fraction)`` pairs; patents are assigned by a seeded hash of their id.
        seed: seed of the split and order hashes.
        image_format / image_mode / max_side / quality: image normalisation (:class:`ImageOptions`).
        progress: tqdm progress bar (drawings) on stderr.
        workers: encoding processes (1 = in this process). The output does not depend on it.
        input_format: ``manifest``, ``deeppatent2``, ``deeppatent`` or ``csv`` (:mod:`.importers`).
        import_options: the importers' options (class table, images root, CSV columns, ...).
        split_date: temporal split: patents granted before this ISO date are split by ``splits``; patents granted on
            or after it go to ``query_split``.
        captions / captions_join: a JSON Lines captions file joined to the drawings (:mod:`.captions`).
        templates / templates_file: caption templates for drawings without captions (default
            :data:`DEFAULT_TEMPLATES`).
        max_caption_chars: longer captions are cut at a word boundary (0 = no limit).
        storage_options: fsspec options of the output (e.g. :func:`storage_options_from`).
        resume: skip shards a previous run completed with the same plan (False rebuilds everything).
        contact_sheet: write ``build_report_contact_sheet.png`` of the first this many drawings into the output
            (0 = none; :mod:`.contact_sheet`).
    """
    t0 = time.time()
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    splits = tuple((str(n), float(f)) for n, f in splits)
    if not splits or any(f < 0 for _, f in splits) or sum(f for _, f in splits) <= 0:
        raise ValueError(f"bad split fractions {splits!r}")
    names = [n for n, _ in splits] + ([query_split] if split_date else [])
    if len(set(names)) != len(names) or any(not re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names):
        raise ValueError(f"split names must be distinct and use letters, digits, '_' and '-' only: {names}")
    if split_date is not None:
        try:
            split_date = _dt.date.fromisoformat(str(split_date)).isoformat()
        except ValueError:
            raise ValueError(f"split date {split_date!r} is not an ISO date YYYY-MM-DD") from None
    if captions_join not in JOIN_MODES:
        raise ValueError(f"captions_join must be one of {JOIN_MODES}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    image = ImageOptions(image_format=image_format, mode=image_mode, max_side=max_side, quality=quality)
    if templates_file:
        tmpl = load_templates(templates_file)
    else:
        tmpl = parse_templates(templates if templates is not None else DEFAULT_TEMPLATES)
    out = Output(out_dir, storage_options)
    out.check_access()  # wrong credentials: refused now, with endpoint, bucket and key id, not after the encoding

    # 1. read
    paths = manifest_path if isinstance(manifest_path, (list, tuple)) else [manifest_path]
    iopts = dataclasses.replace(import_options or ImportOptions(), workers=workers, progress=progress)
    records, problems, in_stats = import_records(input_format, [str(p) for p in paths], iopts)
    report_lines = in_stats.pop("report_lines", [])
    problems = [p.to_dict() for p in problems]

    # captions file
    caption_info: Dict[str, Any] = {}
    caption_offsets: Dict[Tuple[str, int], int] = {}
    captions_id: Optional[List] = None
    if captions:
        index = CaptionIndex(captions)
        used = set()
        # a key that is a patent number (any spelling: D0909824, USD0909824) captions all drawings of the patent,
        # e.g. a per-patent LLM caption
        by_patent: Dict[str, str] = {}
        for k in index.offsets:
            by_patent.setdefault(canonical_patent_key(k), k)
        for r in records:
            for d in r.drawings:
                key = f"{r.patent_id}_{d.index:02d}"
                k = next((c for c in (key, d.path, d.extra.get("_input_path")) if c in index.offsets), None)
                if k is None:
                    k = by_patent.get(canonical_patent_key(r.patent_id))
                if k is not None:
                    caption_offsets[(r.patent_id, d.index)] = index.offsets[k]
                    used.add(k)
        unmatched = [k for k in index.offsets if k not in used]
        for line, kind, reason in index.problems:
            problems.append(Problem(line, None, reason, kind, "note", source=Path(captions).name).to_dict())
        caption_info = {"file": str(captions), "lines": index.lines_read, "keys": len(index),
                        "drawings_matched": len(caption_offsets), "keys_unmatched": len(unmatched),
                        "unmatched_keys": unmatched[:1000], "join": captions_join}
        st = os.stat(captions)
        captions_id = [st.st_size, st.st_mtime_ns]

    # 2. plan
    codes = sorted({r.class_code for r in records})
    class_id = {c: i for i, c in enumerate(codes)}
    class_name = {r.class_code: r.class_name for r in records}
    planned_counts = Counter({c: 0 for c in codes})
    for r in records:
        planned_counts[r.class_code] += len(r.drawings)
    categories = head_tail_categories(dict(planned_counts))
    by_split: Dict[str, List[PatentRecord]] = {n: [] for n in names}
    for r in records:
        if split_date and r.grant_date >= split_date:
            by_split[query_split].append(r)
        else:
            by_split[assign_split(r.patent_id, splits, seed)].append(r)
    jobs = plan_shards(by_split, samples_per_shard, seed, caption_offsets)
    settings = BuildSettings(image, tmpl, str(captions) if captions else None, captions_join, max_caption_chars,
                             class_id, categories, out.url, dict(storage_options or {}))
    settings_part = json.dumps(settings.fingerprint_part(), sort_keys=True)
    for j in jobs:
        j.fingerprint = shard_fingerprint(j, settings_part, captions_id)

    # 3. resume: what is complete already
    for n in names:
        out.makedirs(n)
    out.makedirs(BUILD_DIR)
    done: Dict[Tuple[str, int], Dict] = {}
    stale: List[str] = []
    planned_names = {(j.split, j.name) for j in jobs}
    listing = {n: out.list_files(n) for n in names}
    sidecar_listing = {n: out.list_files(BUILD_DIR, n) for n in names}
    for n in names:
        for fname in listing[n]:
            m = _SHARD_RE.match(fname)
            if fname.startswith(".") and ".partial" in fname:
                out.remove([n, fname])  # a shard a crashed or interrupted run left half-written
            elif m and m.group("split") == n and (n, fname) not in planned_names:
                out.remove([n, fname])  # from an earlier build with a different plan
                out.remove([BUILD_DIR, n, fname + ".json"])
                stale.append(f"{n}/{fname}")
    if resume:
        want = [(j, [BUILD_DIR, j.split, j.name + ".json"]) for j in jobs
                if j.name + ".json" in sidecar_listing[j.split]]
        got = out.read_many([w[1] for w in want])
        for j, rel in want:
            raw = got.get(out.path(*rel))
            try:
                st = json.loads(raw) if raw else None
            except ValueError:
                st = None
            # complete: the tar of the recorded size, or for a shard left out as empty, no tar at all
            size = listing[j.split].get(j.name, 0 if st and st.get("count") == 0 else None)
            if st and st.get("fingerprint") == j.fingerprint and size == st.get("bytes"):
                done[(j.split, j.index)] = st
    todo = [j for j in jobs if (j.split, j.index) not in done]

    # 4. encode
    total = sum(j.planned for j in jobs)
    bar = tqdm(total=total, desc="drawings", unit="img", disable=not progress, smoothing=0.05)
    bar.update(sum(j.planned for j in jobs if (j.split, j.index) in done))
    results: Dict[Tuple[str, int], Dict] = dict(done)
    pool = None
    staging = None if out.local else tempfile.mkdtemp(prefix="patentclip-staging-")
    settings.staging_dir = staging
    uploads = None
    pending: list = []

    def finished(st):
        results[(st["split"], st["index"])] = st
        bar.update(st["planned"])

    def collect(limit: int):
        """Wait for uploads until at most ``limit`` are in flight (bounds the staged files on local disk)."""
        while len(pending) > limit:
            finished(pending.pop(0).result())

    def handle(st):
        if "_staged" not in st:
            finished(st)
            return
        pending.append(uploads.submit(commit_staged, out, st))
        collect(2 * workers)

    try:
        if not out.local:
            uploads = ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="patentclip-upload")
        if workers == 1 or len(todo) <= 1:
            for j in todo:
                handle(run_job(j, settings))
        else:
            ctx = mp.get_context("spawn")
            pool = ctx.Pool(min(workers, len(todo)), initializer=ignore_sigint)
            # biggest jobs first (better balance at the end); the output does not depend on the order
            order = sorted(todo, key=lambda j: (-j.planned, j.split, j.index))
            for st in pool.imap_unordered(run_job_star, [(j, settings) for j in order], chunksize=1):
                handle(st)
            pool.close()
            pool.join()
            pool = None
        collect(0)
    except KeyboardInterrupt:
        bar.close()
        raise KeyboardInterrupt(f"interrupted: {len(results)} of {len(jobs)} shards are complete; run the same "
                                "command again to resume") from None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if uploads is not None:
            for f in pending:
                f.cancel()
            uploads.shutdown(wait=True)
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        bar.close()

    # 5. report
    report = assemble_report(jobs, results, names, codes, class_name, categories, problems, in_stats)
    report.update({"input": {"format": input_format, "paths": [str(p) for p in paths], **in_stats},
                   "manifest": str(paths[0]), "out_dir": out.url, "seed": seed, "samples_per_shard": samples_per_shard,
                   "image_format": image.ext, "image": image.to_dict(), "splits": {n: f for n, f in splits},
                   "split_rule": ({"type": "temporal", "date": split_date, "query_split": query_split}
                                  if split_date else {"type": "patent_hash", "seed": seed}),
                   "captions": caption_info or None, "templates": list(tmpl), "workers": workers,
                   "shards_reused": len(done), "shards_written": len(todo), "stale_shards_removed": stale,
                   "elapsed_s": round(time.time() - t0, 3)})
    report["drawings_per_s"] = round(report["drawings_written_total"] / max(1e-9, report["elapsed_s"]), 2)
    report["importer_summary"] = report_lines
    all_counts = report.pop("_all_counts")
    for n in names:
        sizes = {s["name"]: s["count"] for s in (results[(j.split, j.index)] for j in jobs if j.split == n)
                 if s["count"]}
        out.write_json([n, "sizes.json"], sizes)
        out.write_json([n, "classes.json"], classes_rows(codes, class_name, report["class_counts_by_split"][n],
                                                      categories))
    out.write_json(["classes.json"], classes_rows(codes, class_name, all_counts, categories))
    if contact_sheet:
        report["contact_sheet"] = write_contact_sheet(out, names, report["shards"], contact_sheet)
    out.write_json(["build_report.json"], report)
    out.write_bytes(["build_report.txt"], (summary(report) + "\n").encode("utf-8"))
    return report


def shard_pattern(folder, names: Optional[Sequence[str]] = None) -> str:
    """Brace pattern covering a split folder's shards (from its sizes.json unless names are given); the folder
    may be a local path or an fsspec URL."""
    folder = str(folder)
    remote = is_remote(folder)
    join = (lambda a, b: posixpath.join(a.rstrip("/"), b)) if remote else (lambda a, b: str(Path(a) / b))
    if names is None:
        if remote:
            with fsspec.open(join(folder, "sizes.json"), "r") as f:
                names = sorted(json.load(f))
        else:
            names = sorted(json.loads((Path(folder) / "sizes.json").read_text()))
    names = sorted(names)
    if not names:
        raise ValueError(f"no shards in {folder}")
    if len(names) == 1:
        return join(folder, names[0])
    prefix = names[0].rsplit("-", 1)[0]
    digits = [n.rsplit("-", 1)[1].split(".")[0] for n in names]
    runs: List[List[str]] = []  # consecutive numbers; a shard left out as empty makes a gap
    for d in digits:
        if runs and int(d) == int(runs[-1][-1]) + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    if len(runs) == 1:
        return join(folder, f"{prefix}-{{{digits[0]}..{digits[-1]}}}.tar")
    return join(folder, f"{prefix}-{{{','.join(f'{{{r[0]}..{r[-1]}}}' for r in runs)}}}.tar")
