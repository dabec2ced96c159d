"""One shard job, run in a worker process: decode and normalise its drawings, join and clean their captions, write
the tar (fixed member metadata, so the same input gives byte-identical shards) under a temporary name, commit it
(rename, or staged for the main process to upload: :func:`commit_staged`), and write its stats sidecar
``.build/<split>/<name>.json`` (:mod:`patentclip.shards.build`, step 3)."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from collections import Counter
from typing import Any, Dict, List

from patentclip.plugins import fault_points

from . import sample_format as SF
from .build_plan import BuildSettings, ShardJob
from .captions import (CaptionReader, clean_captions, clean_captions_traced, drawing_fields, join_captions,
                       line_provenance, render_templates)
from .images import ImageError, normalize_image
from .manifest import PatentRecord, Problem
from .output import Output

BUILD_DIR = ".build"
_TAR_MTIME = 1262304000  # 2010-01-01: fixed so that the same input gives byte-identical shards


class _HashingFile:
    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self):
        return self.n


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = _TAR_MTIME
    ti.mode = 0o444
    ti.uname = ti.gname = "patentclip"
    tar.addfile(ti, io.BytesIO(data))


def _where(r: PatentRecord, d) -> str:
    src = r.extra.get("_source")
    if src:
        return f"{src} line {d.extra.get('_line', r.line)}: patent {r.patent_id}: image {d.path!r}"
    return f"line {r.line}: drawing {d.number} {d.path!r}"


def _drawing_problem(r: PatentRecord, d, reason: str, kind: str, scope: str) -> Dict:
    return Problem(d.extra.get("_line", r.line), r.patent_id, f"{_where(r, d)}: {reason}", kind, scope, d.number,
                   d.path, r.extra.get("_source")).to_dict()


def run_job(job: ShardJob, settings: BuildSettings) -> Dict[str, Any]:
    """Encode and write one shard; returns its stats.

    Local output: the tar is written under a temporary name, renamed, and the stats sidecar written. Remote output:
    the tar is written to ``settings.staging_dir`` and the stats carry ``_staged``: the main process uploads it and
    then writes the sidecar (:func:`commit_staged`), so the workers need no object-store client.
    """
    t_start = time.perf_counter()
    out = Output(settings.out_url, settings.storage_options)
    problems: List[Dict] = []
    class_counts: Counter = Counter()
    views: Counter = Counter()
    dates: List[str] = []
    records_written = 0
    count = 0
    reader = CaptionReader(settings.captions_path) if settings.captions_path and job.caption_offsets else None
    ext = settings.image.ext
    if out.local:
        out.makedirs(job.split)
        tmp = out.path(job.split, f".{job.name}.partial")
    else:
        tmp = os.path.join(settings.staging_dir or tempfile.gettempdir(), f"{job.split}-{job.index:06d}.partial")
    committed = False
    try:
        with open(tmp, "wb") as raw:
            hf = _HashingFile(raw)
            with tarfile.open(fileobj=hf, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for r in job.records:
                    samples = []
                    for d in r.drawings:
                        key = SF.sample_key(r.patent_id, d.index)
                        try:
                            data, orig, size = normalize_image(r.image_source(d, settings.image), settings.image)
                        except ImageError as exc:
                            problems.append(_drawing_problem(r, d, f"{exc.kind.replace('_', ' ')} ({exc})", exc.kind,
                                                             "drawing"))
                            continue
                        own = list(d.captions) or render_templates(settings.templates, drawing_fields(r, d))
                        line = reader.read_line(job.caption_offsets[key]) if reader and key in job.caption_offsets \
                            else None
                        joined = list(line.get("captions") or []) if line is not None else None
                        prov, bad_prov = line_provenance(line) if line else (None, None)
                        merged = join_captions(own, joined, settings.captions_join)
                        merged_prov = join_captions([None] * len(own), prov, settings.captions_join) if prov else None
                        captions, repairs, kept_from = clean_captions_traced(merged, settings.max_caption_chars)
                        if bad_prov:
                            repairs.append(("caption_provenance_dropped", f"captions file: {bad_prov}"))
                        if not captions and joined is not None:
                            captions, more = clean_captions(own, settings.max_caption_chars)
                            merged_prov = None
                            repairs.append(("caption_empty", "no usable caption in the captions file; the drawing's "
                                                             "own captions are used"))
                            repairs.extend(more)
                        for kind, detail in repairs:
                            problems.append(_drawing_problem(r, d, detail, kind, "repair"))
                        if not captions:
                            problems.append(_drawing_problem(r, d, "no caption (none given and no template applies)",
                                                             "no_caption", "drawing"))
                            continue
                        meta = {SF.PATENT_ID: r.patent_id, SF.DRAWING_INDEX: d.index, SF.NUM_DRAWINGS: 0,
                                SF.VIEW: d.view, SF.CLASS_ID: settings.class_ids[r.class_code],
                                SF.CLASS_CODE: r.class_code, SF.CLASS_NAME: r.class_name,
                                SF.CATEGORY: settings.categories[r.class_code], SF.GRANT_DATE: r.grant_date,
                                SF.TITLE: r.title, SF.CAPTIONS: captions, SF.ORIG_SIZE: list(orig),
                                SF.SIZE: list(size)}
                        if merged_prov:
                            meta[SF.CAPTION_PROVENANCE] = [merged_prov[i] for i in kept_from]
                        for k, v in list(r.extra.items()) + list(d.extra.items()):
                            if not k.startswith("_") and k not in meta:
                                meta[k] = v
                        samples.append((key, data, meta))
                    if not samples:
                        src = r.extra.get("_source")
                        problems.append(Problem(r.line, r.patent_id, f"{src + ' ' if src else ''}line {r.line}: "
                                                f"patent {r.patent_id}: no drawing could be written; record skipped",
                                                "no_drawings", "record", source=src).to_dict())
                        continue
                    for key, data, meta in samples:
                        meta[SF.NUM_DRAWINGS] = len(samples)
                        for name, b in SF.encode_members(key, ext, data, meta):
                            _add_member(tar, name, b)
                        views[meta[SF.VIEW]] += 1
                    class_counts[r.class_code] += len(samples)
                    dates.append(r.grant_date)
                    records_written += 1
                    count += len(samples)
            raw.flush()
            os.fsync(raw.fileno())
        nbytes, digest = hf.n, hf.h.hexdigest()
        t_encoded = time.perf_counter()
        if count == 0:  # every drawing failed: no shard (a 0-sample tar stalls every reader), and no old one
            nbytes, digest = 0, None
            os.remove(tmp)
            if out.local:
                out.remove([job.split, job.name])
            problems.append(Problem(0, None, f"{job.split}/{job.name}: none of its {job.planned} planned drawings "
                                    f"could be written; the shard is left out (the other shards keep their names)",
                                    "empty_shard", "note").to_dict())
        elif out.local:
            out.put_file(tmp, [job.split, job.name])
        committed = True
        t_committed = time.perf_counter()
    finally:
        if reader:
            reader.close()
        if not committed and os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
    stats = {"split": job.split, "index": job.index, "name": job.name, "fingerprint": job.fingerprint,
             "count": count, "planned": job.planned, "bytes": nbytes, "sha256": digest,
             "records_written": records_written, "class_counts": dict(sorted(class_counts.items())),
             "views": dict(sorted(views.items())), "date_min": min(dates) if dates else None,
             "date_max": max(dates) if dates else None, "problems": problems,
             "seconds": {"encode": round(t_encoded - t_start, 3), "commit": round(t_committed - t_encoded, 3)},
             "pid": os.getpid()}
    if out.local:
        _write_sidecar(out, stats)
    else:
        stats["_staged"] = tmp if count else None
    return stats


def _write_sidecar(out: Output, stats: Dict[str, Any]) -> None:
    """The shard's stats sidecar, written once the shard is committed: from here on the shard counts as done."""
    out.write_json([BUILD_DIR, stats["split"], stats["name"] + ".json"], stats)
    fault_points.hold("shard", f"{stats['split']}/{stats['name']}")  # the kill-mid-build test acts here


def commit_staged(out: Output, stats: Dict[str, Any]) -> Dict[str, Any]:
    """Upload a staged shard to its final key (it appears there only when complete), then write its sidecar."""
    staged = stats.pop("_staged")
    t = time.perf_counter()
    if staged is None:  # an empty shard: not written, and no object of an earlier build left under its name
        out.remove([stats["split"], stats["name"]])
    else:
        try:
            out.put_file(staged, [stats["split"], stats["name"]])
        finally:
            try:
                os.remove(staged)
            except OSError:
                pass
    stats["seconds"]["commit"] = round(time.perf_counter() - t, 3)
    _write_sidecar(out, stats)
    return stats


def run_job_star(args):
    job, settings = args
    return run_job(job, settings)
