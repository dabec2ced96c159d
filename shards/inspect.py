"""``patentclip-shards inspect``: validate shards against their format (shards/sample_format.py) and describe them.

Checks (each failure is one line in ``problems``; the CLI exits 1 when there is any):

* every shard listed in ``sizes.json`` exists and is a readable tar; tars in the folder not in ``sizes.json``;
* every member decodes: the image (PNG/JPEG/WebP, fully), ``txt`` (UTF-8, not empty), ``json`` (an object),
  ``cls`` (a decimal integer); a sample has exactly one image, a txt, a json and a cls, in adjacent members;
* keys are consistent: ``<patent_id>_<NN>`` with the json's ``patent_id`` and ``drawing_index``, ``cls`` equal
  to the json's ``class_id``, the class id and code as in ``classes.json``, no key twice;
* patents are not split: the drawings of a patent are adjacent in one shard, ``num_drawings`` equals their number,
  and no patent appears in two shards or two splits;
* counts match: samples per shard equal ``sizes.json``, drawings per class equal the ``count`` of ``classes.json``.

It also reports, per split, the class histogram (with head/tail), the views, and the grant dates (range and per
year).
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import posixpath
import tarfile
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from patentclip.plugins.remote_io import is_remote

from . import sample_format as SF



def _fs_and_path(url: str, storage_options: Optional[Dict] = None):
    import fsspec

    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _read_json(url: str, storage_options=None):
    fs, p = _fs_and_path(url, storage_options)
    try:
        with fs.open(p, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None


def check_shard(url: str, storage_options: Optional[Dict] = None,
                class_codes: Optional[Dict[int, str]] = None,
                class_names: Optional[Dict[int, str]] = None) -> Dict[str, Any]:
    """Read one shard completely; returns its summary (counts, patents in order, classes, views, dates) and its
    problems. ``class_codes`` / ``class_names``: class id -> code / name from ``classes.json``, to check the
    samples' json against (a classes.json whose names were swapped passes the code check but not this one)."""
    from PIL import Image

    name = posixpath.basename(url)
    problems: List[str] = []
    samples: List[Dict[str, Any]] = []
    fs, p = _fs_and_path(url, storage_options)
    seen_keys = set()
    current: Optional[Dict[str, Any]] = None

    def finish(s):
        if s is None:
            return
        key = s["key"]
        where = f"{name}: sample {key!r}"
        exts = s["members"]
        imgs = [e for e in exts if e in SF.IMAGE_EXTS]
        for need in SF.REQUIRED_MEMBERS:
            if need not in exts:
                problems.append(f"{where}: no .{need} member")
        if len(imgs) != 1:
            problems.append(f"{where}: {len(imgs)} image members ({', '.join(imgs) or 'none'}); expected one")
        meta = s.get("meta")
        m = SF.KEY_RE.match(key)
        if not m:
            problems.append(f"{where}: key is not <patent_id>_<NN>")
        if isinstance(meta, dict):
            pid, idx = meta.get(SF.PATENT_ID), meta.get(SF.DRAWING_INDEX)
            if m and (pid != m.group("pid") or not isinstance(idx, int) or idx != int(m.group("idx"))):
                problems.append(f"{where}: key does not match json patent_id {pid!r} / drawing_index {idx!r}")
            if SF.CLS in s and s[SF.CLS] is not None and meta.get(SF.CLASS_ID) != s[SF.CLS]:
                problems.append(f"{where}: cls {s[SF.CLS]} but json class_id {meta.get(SF.CLASS_ID)!r}")
            caps = meta.get(SF.CAPTIONS)
            if s.get(SF.TXT) is not None and isinstance(caps, list) and caps and caps[0] != s[SF.TXT]:
                problems.append(f"{where}: txt is not the first of the json captions")
            for f in SF.CHECKED_META_FIELDS:
                if f not in meta:
                    problems.append(f"{where}: json has no {f!r}")
        got = meta if isinstance(meta, dict) else {}
        samples.append({"key": key, "patent_id": got.get(SF.PATENT_ID), "class_id": s.get(SF.CLS),
                        "class_code": got.get(SF.CLASS_CODE), "class_name": got.get(SF.CLASS_NAME),
                        "view": got.get(SF.VIEW),
                        "grant_date": got.get(SF.GRANT_DATE), "num_drawings": got.get(SF.NUM_DRAWINGS)})

    try:
        with fs.open(p, "rb") as raw:
            with tarfile.open(fileobj=raw, mode="r|") as tar:
                for ti in tar:
                    if not ti.isfile():
                        continue
                    base = posixpath.basename(ti.name)
                    if "." not in base:
                        problems.append(f"{name}: member {ti.name!r} has no extension")
                        continue
                    key, ext = base.split(".", 1)
                    data = tar.extractfile(ti).read()
                    if current is None or current["key"] != key:
                        finish(current)
                        if key in seen_keys:
                            problems.append(f"{name}: key {key!r} appears twice (duplicate key or members of a "
                                            "sample not adjacent)")
                        seen_keys.add(key)
                        current = {"key": key, "members": []}
                    if ext in current["members"]:
                        problems.append(f"{name}: member {ti.name!r} twice")
                    current["members"].append(ext)
                    where = f"{name}: member {ti.name!r}"
                    try:
                        if ext in SF.IMAGE_EXTS:
                            with Image.open(io.BytesIO(data)) as im:
                                im.load()
                        elif ext == SF.TXT:
                            t = data.decode("utf-8")
                            current[SF.TXT] = t
                            if not t.strip():
                                problems.append(f"{where}: empty caption")
                        elif ext == SF.JSON:
                            current["meta"] = json.loads(data.decode("utf-8"))
                            if not isinstance(current["meta"], dict):
                                problems.append(f"{where}: not a JSON object")
                        elif ext == SF.CLS:
                            current[SF.CLS] = SF.decode_cls(data)
                    except Exception as exc:
                        problems.append(f"{where}: does not decode ({type(exc).__name__}: {exc})")
                        if ext == SF.CLS:
                            current[SF.CLS] = None
    except FileNotFoundError:
        return {"url": url, "name": name, "missing": True, "count": 0, "patents": [], "classes": {}, "views": {},
                "years": {}, "date_min": None, "date_max": None, "problems": [f"{name}: file not found"]}
    except Exception as exc:  # truncated or corrupt tar, read errors
        finish(current)
        current = None
        problems.append(f"{name}: unreadable tar ({type(exc).__name__}: {exc})")
    finish(current)
    # patents adjacent and complete within the shard
    runs: List[Tuple[str, int]] = []
    for s in samples:
        pid = s["patent_id"]
        if runs and runs[-1][0] == pid:
            runs[-1] = (pid, runs[-1][1] + 1)
        else:
            runs.append((pid, 1))
    seen = Counter(pid for pid, _ in runs)
    for pid, n in seen.items():
        if n > 1 and pid is not None:
            problems.append(f"{name}: the drawings of patent {pid} are not adjacent")
    nd = {s["patent_id"]: s["num_drawings"] for s in samples}
    counts = Counter(s["patent_id"] for s in samples)
    for pid, n in counts.items():
        if pid is not None and nd.get(pid) != n:
            problems.append(f"{name}: patent {pid} has {n} drawings here but num_drawings {nd.get(pid)}")
    for smp in samples:
        cid = smp["class_id"]
        if class_codes is not None and cid is not None:
            code = class_codes.get(cid)
            if code is None:
                problems.append(f"{name}: sample {smp['key']!r}: class id {cid} not in classes.json")
            elif smp["class_code"] is not None and code != smp["class_code"]:
                problems.append(f"{name}: sample {smp['key']!r}: class id {cid} is {code} in classes.json but "
                                f"{smp['class_code']} in its json")
            elif class_names is not None and smp["class_name"] is not None \
                    and class_names.get(cid) != smp["class_name"]:
                problems.append(f"{name}: sample {smp['key']!r}: class id {cid} ({code}) is named "
                                f"{class_names.get(cid)!r} in classes.json but {smp['class_name']!r} in its json")
    dates = [str(x["grant_date"]) for x in samples if x["grant_date"]]
    return {"url": url, "name": name, "missing": False, "count": len(samples),
            "patents": [pid for pid, _ in runs if pid is not None],
            "classes": dict(Counter(x["class_code"] for x in samples)),
            "views": dict(Counter(x["view"] for x in samples)),
            "years": dict(Counter(d[:4] for d in dates)),
            "date_min": min(dates) if dates else None, "date_max": max(dates) if dates else None,
            "problems": problems}


def _check_star(args):
    return check_shard(*args)


def _expand(spec: str) -> List[str]:
    import braceexpand

    return [u for part in spec.split("::") for u in braceexpand.braceexpand(part)]


def _resolve(spec: str, storage_options=None) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """split name -> {folder, urls, sizes, classes}, plus problems."""
    problems: List[str] = []
    splits: Dict[str, Dict[str, Any]] = {}
    remote = is_remote(spec)
    j = (lambda a, b: posixpath.join(a.rstrip("/"), b))
    if "{" in spec or spec.endswith(".tar"):
        urls = _expand(spec)
        by_folder: Dict[str, List[str]] = {}
        for u in urls:
            by_folder.setdefault(posixpath.dirname(u), []).append(u)
        for folder, us in by_folder.items():
            split = posixpath.basename(folder.rstrip("/")) or "shards"
            sizes = _read_json(j(folder, "sizes.json"), storage_options)
            if sizes is None:
                problems.append(f"{folder}: no sizes.json beside the shards")
            splits[split] = {"folder": folder, "urls": us, "sizes": sizes,
                             "classes": _read_json(j(folder, "classes.json"), storage_options), "listed": None}
        return splits, problems
    fs, root = _fs_and_path(spec, storage_options)
    spec = spec.rstrip("/")

    def one(folder: str, split: str):
        sizes = _read_json(j(folder, "sizes.json"), storage_options)
        try:
            entries = fs.ls(fs._strip_protocol(folder) if remote else folder, detail=False)
        except FileNotFoundError:
            entries = []
        tars = sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.endswith(".tar"))
        names = sorted(sizes) if isinstance(sizes, dict) else tars
        splits[split] = {"folder": folder, "urls": [j(folder, n) for n in names], "sizes": sizes,
                         "classes": _read_json(j(folder, "classes.json"), storage_options), "listed": tars}
        if sizes is None:
            problems.append(f"{folder}: no sizes.json")

    if _read_json(j(spec, "sizes.json"), storage_options) is not None:
        one(spec, posixpath.basename(spec))
        return splits, problems
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return {}, [f"{spec}: not found"]
    for e in sorted(entries, key=lambda e: e["name"]):
        if e.get("type") != "directory":
            continue
        name = posixpath.basename(e["name"].rstrip("/"))
        if name.startswith("."):
            continue
        folder = j(spec, name)
        if _read_json(j(folder, "sizes.json"), storage_options) is not None:
            one(folder, name)
    if not splits:
        problems.append(f"{spec}: no shards found (no sizes.json here or in its sub-folders)")
    return splits, problems


def inspect_shards(spec: str, *, workers: int = 1, storage_options: Optional[Dict] = None) -> Dict[str, Any]:
    """Validate the shards of ``spec`` (module docstring); returns the findings (``problems`` empty when valid)."""
    spec = str(spec)
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    splits, problems = _resolve(spec, storage_options)
    def field_of(s, f):
        return {c.get("id"): c.get(f) for c in s["classes"]} if isinstance(s["classes"], list) else None

    jobs = [(u, storage_options, field_of(s, "code"), field_of(s, "name")) for s in splits.values()
            for u in s["urls"]]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = pool.map(_check_star, jobs, chunksize=1)
    else:
        results = [check_shard(*a) for a in jobs]
    by_url = {r["url"]: r for r in results}
    patent_where: Dict[str, str] = {}
    out_splits: Dict[str, Any] = {}
    histogram: Counter = Counter()
    for split, s in splits.items():
        classes = s["classes"] if isinstance(s["classes"], list) else None
        if s["classes"] is None:
            problems.append(f"{s['folder']}: no classes.json")
        if s.get("listed") is not None and isinstance(s["sizes"], dict):
            for extra in sorted(set(s["listed"]) - set(s["sizes"])):
                problems.append(f"{split}/{extra}: a shard not listed in sizes.json")
        codes: Counter = Counter()
        views: Counter = Counter()
        years: Counter = Counter()
        dates: List[str] = []
        n_samples = 0
        n_patents = 0
        for u in s["urls"]:
            r = by_url[u]
            problems.extend(f"{split}/{p}" for p in r["problems"])
            if r["missing"]:
                continue
            n = r["count"]
            n_samples += n
            if n == 0 and not r["problems"]:
                problems.append(f"{split}/{r['name']}: no samples (a shard without samples stalls a trainer's "
                                f"stream; `patentclip-shards build` leaves such shards out)")
            if isinstance(s["sizes"], dict) and r["name"] in s["sizes"] and int(s["sizes"][r["name"]]) != n:
                problems.append(f"{split}/{r['name']}: {n} samples but sizes.json says {s['sizes'][r['name']]}")
            here = f"{split}/{r['name']}"
            for pid in dict.fromkeys(r["patents"]):
                if pid in patent_where:
                    problems.append(f"patent {pid} is split: in {patent_where[pid]} and {here}")
                else:
                    patent_where[pid] = here
                    n_patents += 1
            codes.update(r["classes"])
            views.update(r["views"])
            years.update(r["years"])
            dates += [d for d in (r["date_min"], r["date_max"]) if d]
        if classes is not None:
            for c in classes:
                if int(c.get("count", 0)) != codes.get(c.get("code"), 0):
                    problems.append(f"{split}: class {c.get('code')} has {codes.get(c.get('code'), 0)} drawings but "
                                    f"classes.json says {c.get('count')}")
        histogram.update(codes)
        cats = {c.get("code"): c.get("category") for c in classes} if classes else {}
        names = {c.get("code"): c.get("name") for c in classes} if classes else {}
        out_splits[split] = {
            "folder": s["folder"], "shards": len(s["urls"]), "samples": n_samples, "patents": n_patents,
            "classes": {str(k): {"count": v, "name": names.get(k), "category": cats.get(k)}
                        for k, v in sorted(codes.items(), key=lambda kv: (-kv[1], str(kv[0])))},
            "views": dict(sorted(views.items(), key=lambda kv: (-kv[1], str(kv[0])))),
            "dates": {"min": min(dates) if dates else None, "max": max(dates) if dates else None,
                      "by_year": dict(sorted(years.items()))},
        }
    return {"spec": spec, "splits": out_splits,
            "class_histogram": {str(k): v for k, v in sorted(histogram.items(), key=lambda kv: (-kv[1], str(kv[0])))},
            "problems": problems}


def format_findings(f: Dict[str, Any], max_problems: int = 50) -> str:
    lines = [f"shards: {f['spec']}"]
    for split, s in f["splits"].items():
        d = s["dates"]
        lines.append(f"\n[{split}] {s['samples']} drawings, {s['patents']} patents, {s['shards']} shards"
                     + (f", granted {d['min']} .. {d['max']}" if d["min"] else ""))
        lines.append("  classes (drawings):")
        for code, c in list(s["classes"].items())[:30]:
            lines.append(f"    {c['count']:8d}  {code}  {c['name'] or ''}" + (f"  [{c['category']}]" if c['category'] else ""))
        if len(s["classes"]) > 30:
            lines.append(f"    ... {len(s['classes']) - 30} more classes")
        lines.append("  views: " + ", ".join(f"{k} {v}" for k, v in s["views"].items()))
        if d["by_year"]:
            lines.append("  years: " + ", ".join(f"{k} {v}" for k, v in d["by_year"].items()))
    probs = f["problems"]
    if probs:
        lines.append(f"\nPROBLEMS: {len(probs)}")
        lines.extend(f"  {p}" for p in probs[:max_problems])
        if len(probs) > max_problems:
            lines.append(f"  ... {len(probs) - max_problems} more")
    else:
        lines.append("\nOK: no problems")
    return "\n".join(lines)
