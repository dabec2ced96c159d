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
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import multiprocessing as mp
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from patentclip.plugins.remote_io import is_remote, retry
from patentclip.plugins.seeding import uniform01

from .captions import (DEFAULT_MAX_CHARS, DEFAULT_TEMPLATES, JOIN_MODES, CaptionIndex, CaptionReader,
                       clean_captions, clean_captions_traced, drawing_fields, join_captions, line_provenance,
                       load_templates, parse_templates, render_templates)
from . import sample_format as SF
from .contact_sheet import write_contact_sheet
from .head_tail import HEAD_FRACTION, head_tail_split
from .images import DEFAULT_MAX_SIDE, ImageError, ImageOptions, normalize_image
from .importers import ImportOptions, canonical_patent_key, import_records
from .manifest import PatentRecord, Problem
from .pool import ignore_sigint

BUILD_DIR = ".build"
#: Bumped when the shard contents for the same input and flags change (3: caption_provenance from captions files;
#: 4: large JPEG sources decoded at a reduced DCT scale, shards/images.py).
FORMAT_VERSION = 4
_TAR_MTIME = 1262304000  # 2010-01-01: fixed so that the same input gives byte-identical shards
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{6})\.tar$")


def assign_split(patent_id: str, splits: Sequence[Tuple[str, float]], seed: int) -> str:
    """The split of a patent: a seeded hash of its id against the cumulative split fractions."""
    total = sum(f for _, f in splits)
    u = uniform01("split", seed, patent_id) * total
    acc = 0.0
    for name, frac in splits:
        acc += frac
        if u < acc:
            return name
    return splits[-1][0]


def head_tail_categories(counts: Dict[str, int], head_fraction: float = HEAD_FRACTION) -> Dict[str, str]:
    """class code -> "head"/"tail" by :func:`patentclip.shards.head_tail.head_tail_split` (the top ``head_fraction``
    of classes by count are head; codes in sorted order, the order of the class ids, so ties go by code)."""
    codes = sorted(counts)
    head = head_tail_split([counts[c] for c in codes], head_fraction=head_fraction)
    return {c: ("head" if h else "tail") for c, h in zip(codes, head)}


def encode_image(path: Path, image_format: str) -> Tuple[bytes, Tuple[int, int]]:
    """Decode (fully) and re-encode a drawing as RGB PNG/JPEG/WebP at its size; raises on unreadable files."""
    data, size, _ = normalize_image(path, ImageOptions(image_format=image_format, mode="RGB", max_side=0))
    return data, size


# --------------------------------------------------------------------------------------------------------------
# Output locations (local folders or any fsspec URL)
# --------------------------------------------------------------------------------------------------------------


def _join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def storage_options_from(endpoint_url: Optional[str] = None, region: Optional[str] = None,
                         profile: Optional[str] = None) -> Dict[str, Any]:
    """s3fs options from CLI flags; without flags s3fs reads the standard AWS variables (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``)."""
    opts: Dict[str, Any] = {}
    client: Dict[str, Any] = {}
    if endpoint_url:
        client["endpoint_url"] = endpoint_url
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    if profile:
        opts["profile"] = profile
    return opts


def _retry(fn, what: str):
    """Call ``fn`` with patentclip's retry rule (plugins/remote_io.py: ``PATENTCLIP_IO_RETRIES`` retries, default 8,
    exponential backoff from ``PATENTCLIP_IO_BACKOFF``); a missing file or a refused permission is not retried."""
    return retry(fn, what, give_up=(FileNotFoundError, PermissionError))


class StorageAccessError(PermissionError):
    """The object store refused the credentials or the request; the message names the endpoint, the bucket and the
    access key id (never the secret)."""


def describe_access(fs, url: str) -> str:
    """``endpoint E, bucket B, access key id K`` of an s3fs filesystem (what a refusal message shows)."""
    endpoint = key_id = None
    try:
        endpoint = fs.s3.meta.endpoint_url
        key_id = fs.s3._request_signer._credentials.access_key  # the key id the request was signed with
    except Exception:  # not connected, not s3fs, or no credentials found at all
        pass
    if not endpoint:
        endpoint = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    key_id = key_id or getattr(fs, "key", None) or os.environ.get("AWS_ACCESS_KEY_ID") or "none found"
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    return f"endpoint {endpoint or 'the default AWS endpoint'}, bucket {bucket}, access key id {key_id}"


class Output:
    """The output location: a local folder (``os`` calls, atomic rename) or an fsspec URL (upload = commit)."""

    def __init__(self, out, storage_options: Optional[Dict[str, Any]] = None):
        s = str(out)
        if s.startswith("file://"):
            s = s[len("file://"):]
        self.url = s.rstrip("/") if is_remote(s) else str(Path(s))
        self.local = not is_remote(s)
        self.storage_options = dict(storage_options or {})
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            if self.local:
                self._fs = fsspec.filesystem("file")
            else:
                self._fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._fs

    def path(self, *parts: str) -> str:
        return _join(self.url, *parts)

    def refused(self, exc: PermissionError, what: str,
                kept: str = "Shards uploaded before are complete: run the build again to resume."
                ) -> StorageAccessError:
        """A clear error for a request the object store refused (wrong key or secret, no permission)."""
        reason = str(exc).strip() or type(exc).__name__
        return StorageAccessError(
            f"{what}: the object store refused the request ({describe_access(self.fs, self.url)}): {reason}. Check "
            f"the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile), the endpoint "
            f"(--endpoint-url or AWS_ENDPOINT_URL) and the bucket's permissions. {kept}")

    def check_access(self) -> None:
        """For a remote output: list it once before any work, so that wrong credentials are refused at once."""
        if self.local:
            return
        try:
            _retry(lambda: self.fs.ls(self._fspath(self.url), refresh=True), f"list {self.url}/")
        except FileNotFoundError:
            pass  # a new prefix
        except PermissionError as exc:
            raise self.refused(exc, f"cannot write shards to {self.url}", "Nothing was written.") from None

    def _fspath(self, p: str) -> str:
        """The path as the filesystem object wants it (no protocol)."""
        if self.local:
            return p
        return self.fs._strip_protocol(p)

    def makedirs(self, *parts: str) -> None:
        if self.local:
            os.makedirs(self.path(*parts), exist_ok=True)

    def write_bytes(self, rel: Sequence[str], data: bytes) -> None:
        """Write a small file atomically (local: temp + rename; remote: one PUT), with retries remotely."""
        p = self.path(*rel)
        if self.local:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + f".tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
            return
        try:
            _retry(lambda: self.fs.pipe_file(self._fspath(p), data), f"write {p}")
        except PermissionError as exc:
            raise self.refused(exc, f"cannot write {p}") from None

    def write_json(self, rel: Sequence[str], obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))

    def read_bytes(self, rel: Sequence[str]) -> Optional[bytes]:
        p = self.path(*rel)
        try:
            if self.local:
                with open(p, "rb") as f:
                    return f.read()
            return self.fs.cat_file(self._fspath(p))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list_files(self, *rel: str) -> Dict[str, int]:
        """name -> size of the files directly in a folder (empty when it does not exist)."""
        p = self.path(*rel)
        if self.local:
            try:
                return {e.name: e.stat().st_size for e in os.scandir(p) if e.is_file()}
            except FileNotFoundError:
                return {}
        try:
            entries = _retry(lambda: self.fs.ls(self._fspath(p), detail=True, refresh=True), f"list {p}")
        except FileNotFoundError:
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0) for e in entries
                if e.get("type") == "file"}

    def read_many(self, rels: List[Sequence[str]]) -> Dict[str, Optional[bytes]]:
        """Read several small files (remote: concurrently); keyed by :meth:`path`."""
        out: Dict[str, Optional[bytes]] = {self.path(*r): None for r in rels}
        if self.local:
            for r in rels:
                out[self.path(*r)] = self.read_bytes(r)
            return out
        if not rels:
            return out
        by = {self._fspath(p): p for p in out}
        got = self.fs.cat(list(by), on_error="omit")
        for k, v in got.items():
            if k in by:
                out[by[k]] = v
        return out

    def remove(self, rel: Sequence[str]) -> None:
        p = self.path(*rel)
        try:
            if self.local:
                os.remove(p)
            else:
                self.fs.rm_file(self._fspath(p))
        except FileNotFoundError:
            pass

    def put_file(self, local_path: str, rel: Sequence[str]) -> None:
        """Move a finished local file to its final name: a rename (local) or an upload (the object appears only
        when the upload is complete)."""
        p = self.path(*rel)
        if self.local:
            os.replace(local_path, p)
            return
        try:
            _retry(lambda: self.fs.put_file(local_path, self._fspath(p)), f"upload {p}")
        except PermissionError as exc:
            raise self.refused(exc, f"cannot upload {p}") from None


# --------------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BuildSettings:
    """Everything a shard job needs besides its records (picklable; part of each job's fingerprint)."""

    image: ImageOptions
    templates: Tuple[str, ...]
    captions_path: Optional[str]
    captions_join: str
    max_caption_chars: int
    class_ids: Dict[str, int]
    categories: Dict[str, str]
    out_url: str
    storage_options: Dict[str, Any] = field(default_factory=dict)
    staging_dir: Optional[str] = None  # remote output: the workers write here, the main process uploads

    def fingerprint_part(self) -> Dict[str, Any]:
        return {"v": FORMAT_VERSION, "image": self.image.to_dict(), "templates": list(self.templates),
                "captions_join": self.captions_join, "max_caption_chars": self.max_caption_chars,
                "class_ids": self.class_ids, "categories": self.categories}


@dataclass
class ShardJob:
    split: str
    index: int
    records: List[PatentRecord]
    caption_offsets: Dict[str, int]
    planned: int
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


def _stat(path: Path) -> List[int]:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, 0]


def _fingerprint(job: ShardJob, settings_part: str, captions_id: Optional[List]) -> str:
    """A digest of everything that goes into the shard: settings, records, image file sizes and times."""
    h = hashlib.sha256()
    h.update(settings_part.encode())
    h.update(json.dumps([job.split, job.index, captions_id, sorted(job.caption_offsets.items())]).encode())
    for r in job.records:
        d = r.to_dict()
        d["_files"] = [_stat(r.image_path(dr)) for dr in r.drawings]
        d["_index"] = [dr.index for dr in r.drawings]
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False, default=str).encode())
    return h.hexdigest()


def plan_shards(by_split: Dict[str, List[PatentRecord]], samples_per_shard: int, seed: int,
                caption_offsets: Dict[Tuple[str, int], int]) -> List[ShardJob]:
    """The shard jobs of every split (see the module docstring); independent of the number of workers."""
    jobs: List[ShardJob] = []
    for split, records in by_split.items():
        order = sorted(records, key=lambda r: (uniform01("order", seed, r.patent_id), r.patent_id))
        current: List[PatentRecord] = []
        count = 0
        index = 0

        def close():
            nonlocal current, count, index
            offs = {}
            for r in current:
                for d in r.drawings:
                    if (r.patent_id, d.index) in caption_offsets:
                        offs[f"{r.patent_id}_{d.index:02d}"] = caption_offsets[(r.patent_id, d.index)]
            jobs.append(ShardJob(split, index, current, offs, count))
            current, count, index = [], 0, index + 1

        for r in order:
            n = len(r.drawings)
            if current and count + n > samples_per_shard:
                close()
            current.append(r)
            count += n
        if current:
            close()
    return jobs


# --------------------------------------------------------------------------------------------------------------
# The shard job (runs in a worker process)
# --------------------------------------------------------------------------------------------------------------


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
        out.write_json([BUILD_DIR, job.split, job.name + ".json"], stats)
    else:
        stats["_staged"] = tmp if count else None
    return stats


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
    out.write_json([BUILD_DIR, stats["split"], stats["name"] + ".json"], stats)
    return stats


def _run_job_star(args):
    job, settings = args
    return run_job(job, settings)


# --------------------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------------------


def _problem_sort_key(p: Dict) -> Tuple:
    return (p.get("source") or "", p.get("line") or 0, p.get("drawing") or 0, p.get("kind") or "", p.get("reason"))


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
        j.fingerprint = _fingerprint(j, settings_part, captions_id)

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
    from tqdm import tqdm

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
            from concurrent.futures import ThreadPoolExecutor

            uploads = ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="patentclip-upload")
        if workers == 1 or len(todo) <= 1:
            for j in todo:
                handle(run_job(j, settings))
        else:
            ctx = mp.get_context("spawn")
            pool = ctx.Pool(min(workers, len(todo)), initializer=ignore_sigint)
            # biggest jobs first (better balance at the end); the output does not depend on the order
            order = sorted(todo, key=lambda j: (-j.planned, j.split, j.index))
            for st in pool.imap_unordered(_run_job_star, [(j, settings) for j in order], chunksize=1):
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
    report = _assemble_report(jobs, results, names, codes, class_name, categories, problems, in_stats)
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
        out.write_json([n, "classes.json"], _classes(codes, class_name, report["class_counts_by_split"][n],
                                                      categories))
    out.write_json(["classes.json"], _classes(codes, class_name, all_counts, categories))
    if contact_sheet:
        report["contact_sheet"] = write_contact_sheet(out, names, report["shards"], contact_sheet)
    out.write_json(["build_report.json"], report)
    out.write_bytes(["build_report.txt"], (summary(report) + "\n").encode("utf-8"))
    return report


def _classes(codes, class_name, counts, categories) -> List[Dict]:
    return [{"id": i, "code": c, "name": class_name[c], "count": int(counts.get(c, 0)), "category": categories[c]}
            for i, c in enumerate(codes)]


def _assemble_report(jobs, results, names, codes, class_name, categories, problems, in_stats) -> Dict:
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


def shard_pattern(folder, names: Optional[Sequence[str]] = None) -> str:
    """Brace pattern covering a split folder's shards (from its sizes.json unless names are given); the folder
    may be a local path or an fsspec URL."""
    folder = str(folder)
    remote = is_remote(folder)
    join = (lambda a, b: posixpath.join(a.rstrip("/"), b)) if remote else (lambda a, b: str(Path(a) / b))
    if names is None:
        if remote:
            import fsspec

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
