"""Build WebDataset shards from a manifest (``patentclip-shards build``).

One sample per drawing::

    <patent_id>_<NN>.png | .jpg   the drawing, re-encoded (RGB)
    <patent_id>_<NN>.txt          its first caption (what vanilla open_clip trains on)
    <patent_id>_<NN>.json         patent_id, drawing_index, num_drawings, view, class_id, class_code, class_name,
                                  category, grant_date, title, captions (all), orig_size [w, h] (+ object)
    <patent_id>_<NN>.cls          the class id, ASCII decimal

The drawings of one patent are adjacent, in drawing order, and never split across shards (a shard is closed
before a patent that would overflow ``samples_per_shard``, unless it is empty) nor across splits (a seeded
hash of the patent id picks the split). Class ids follow the sorted class codes of all valid records, so
they are the same in every split. Beside the shards of each split: ``sizes.json`` (open_clip reads it) and
``classes.json``; in the output folder: ``classes.json`` over all splits and ``build_report.json``.

A shard is written under a temporary name and renamed when complete. Bad records and unreadable drawings are
skipped and reported (line number, patent, path, reason); the build goes on.

Head/tail categories (LLM-informed paper, Figure 1): the classes are ranked by their number of drawings (all
splits); the top 40 % of the classes (rounded up) are ``head``, the rest ``tail``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .manifest import PatentRecord, Problem, read_manifest

HEAD_FRACTION = 0.4


def _u01(*parts) -> float:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 11) / float(1 << 53)


def assign_split(patent_id: str, splits: Sequence[Tuple[str, float]], seed: int) -> str:
    """The split of a patent: a seeded hash of its id against the cumulative split fractions."""
    total = sum(f for _, f in splits)
    u = _u01("split", seed, patent_id) * total
    acc = 0.0
    for name, frac in splits:
        acc += frac
        if u < acc:
            return name
    return splits[-1][0]


def head_tail_categories(counts: Dict[str, int], head_fraction: float = HEAD_FRACTION) -> Dict[str, str]:
    """class code -> "head"/"tail": the top ``head_fraction`` of classes by count (ties by code) are head."""
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    n_head = math.ceil(head_fraction * len(ranked)) if ranked else 0
    return {c: ("head" if i < n_head else "tail") for i, c in enumerate(ranked)}


def encode_image(path: Path, image_format: str) -> Tuple[bytes, Tuple[int, int]]:
    """Decode (fully) and re-encode a drawing as RGB PNG or JPEG; raises on unreadable files."""
    with Image.open(path) as im:
        im.load()
        size = im.size
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    if image_format == "png":
        rgb.save(buf, format="PNG", optimize=False)
    elif image_format in ("jpg", "jpeg"):
        rgb.save(buf, format="JPEG", quality=95)
    else:
        raise ValueError(f"unknown image format {image_format!r} (png or jpg)")
    return buf.getvalue(), size


class _ShardWriter:
    """Writes ``<split>-NNNNNN.tar`` files, each under a temporary name until complete."""

    def __init__(self, folder: Path, split: str):
        self.folder, self.split = folder, split
        self.index, self.count, self.tar, self.tmp = 0, 0, None, None
        self.sizes: Dict[str, int] = {}
        self.bytes = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"

    def open(self):
        import webdataset as wds

        self.tmp = self.folder / (self.name + ".tmp")
        self.tar = wds.TarWriter(str(self.tmp))
        self.count = 0

    def close(self):
        if self.tar is None:
            return
        self.tar.close()
        final = self.folder / self.name
        os.replace(self.tmp, final)
        self.bytes += final.stat().st_size
        self.sizes[self.name] = self.count
        self.tar, self.index = None, self.index + 1

    def write_patent(self, samples: List[Dict], samples_per_shard: int):
        if self.tar is not None and self.count and self.count + len(samples) > samples_per_shard:
            self.close()
        if self.tar is None:
            self.open()
        for s in samples:
            self.tar.write(s)
        self.count += len(samples)


def build_shards(manifest_path, out_dir, *, samples_per_shard: int = 1000,
                 splits: Sequence[Tuple[str, float]] = (("train", 0.8), ("val", 0.2)), seed: int = 0,
                 image_format: str = "png", progress: bool = True) -> Dict:
    """Build shards from a manifest; returns the build report (also written to ``out_dir/build_report.json``)."""
    from tqdm import tqdm

    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    if not splits or any(f < 0 for _, f in splits) or sum(f for _, f in splits) <= 0:
        raise ValueError(f"bad split fractions {splits!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, problems = read_manifest(manifest_path)
    problems = list(problems)

    codes = sorted({r.class_code for r in records})
    class_id = {c: i for i, c in enumerate(codes)}
    class_name = {r.class_code: r.class_name for r in records}
    by_split: Dict[str, List[PatentRecord]] = {name: [] for name, _ in splits}
    for r in records:
        by_split[assign_split(r.patent_id, splits, seed)].append(r)
    drawing_counts = Counter({c: 0 for c in codes})
    for r in records:
        drawing_counts[r.class_code] += len(r.drawings)
    categories = head_tail_categories(dict(drawing_counts))

    report: Dict = {"manifest": str(manifest_path), "out_dir": str(out), "seed": seed,
                    "samples_per_shard": samples_per_shard, "image_format": image_format,
                    "splits": {name: frac for name, frac in splits}, "records_read": len(records) + sum(
                        1 for p in problems if p.scope == "record"), "records_written": 0, "records_skipped": [],
                    "drawings_written": {}, "drawings_skipped": [], "shards": {}, "bytes_written": 0,
                    "class_histogram": {}}
    split_counts: Dict[str, Counter] = {}
    total = sum(len(r.drawings) for r in records)
    bar = tqdm(total=total, desc="drawings", unit="img", disable=not progress)
    for split, _ in splits:
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        writer = _ShardWriter(folder, split)
        counts: Counter = Counter({c: 0 for c in codes})
        order = sorted(by_split[split], key=lambda r: _u01("order", seed, r.patent_id))
        for r in order:
            samples = []
            n = len(r.drawings)
            for k, d in enumerate(r.drawings):
                bar.update(1)
                try:
                    data, size = encode_image(r.image_path(d), image_format)
                except Exception as exc:  # unreadable, truncated or empty image
                    problems.append(Problem(r.line, r.patent_id, f"line {r.line}: drawing {d.number} {d.path!r}: "
                                            f"unreadable image ({type(exc).__name__}: {exc})", "unreadable_image",
                                            scope="drawing", drawing=d.number, path=d.path))
                    continue
                meta = {"patent_id": r.patent_id, "drawing_index": k, "num_drawings": n, "view": d.view,
                        "class_id": class_id[r.class_code], "class_code": r.class_code,
                        "class_name": r.class_name, "category": categories[r.class_code],
                        "grant_date": r.grant_date, "title": r.title, "captions": list(d.captions),
                        "orig_size": list(size)}
                if r.object:
                    meta["object"] = r.object
                samples.append({"__key__": f"{r.patent_id}_{d.index:02d}",
                                "png" if image_format == "png" else "jpg": data,
                                "txt": d.captions[0], "json": json.dumps(meta, ensure_ascii=False),
                                "cls": str(class_id[r.class_code])})
            if not samples:
                problems.append(Problem(r.line, r.patent_id, f"line {r.line}: patent {r.patent_id}: no readable "
                                        f"drawing left; record skipped", "no_drawings"))
                continue
            for s in samples:
                s["json"] = json.dumps({**json.loads(s["json"]), "num_drawings": len(samples)}, ensure_ascii=False)
            writer.write_patent(samples, samples_per_shard)
            counts[r.class_code] += len(samples)
            report["records_written"] += 1
        writer.close()
        (folder / "sizes.json").write_text(json.dumps(writer.sizes, indent=1))
        _write_classes(folder / "classes.json", codes, class_name, counts, categories)
        split_counts[split] = counts
        report["drawings_written"][split] = sum(writer.sizes.values())
        report["shards"][split] = sorted(writer.sizes)
        report["bytes_written"] += writer.bytes
    bar.close()
    all_counts = sum(split_counts.values(), Counter({c: 0 for c in codes}))
    _write_classes(out / "classes.json", codes, class_name, all_counts, categories)
    report["class_histogram"] = {f"{c} {class_name[c]}": int(all_counts[c]) for c in codes}
    report["records_skipped"] = [p.to_dict() for p in problems if p.scope == "record"]
    report["drawings_skipped"] = [p.to_dict() for p in problems if p.scope == "drawing"]
    report["skipped_by_reason"] = dict(Counter(p.kind for p in problems))
    (out / "build_report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def _write_classes(path: Path, codes, class_name, counts, categories) -> None:
    path.write_text(json.dumps([{"id": i, "code": c, "name": class_name[c], "count": int(counts[c]),
                                 "category": categories[c]} for i, c in enumerate(codes)], indent=1,
                               ensure_ascii=False))


def summary(report: Dict) -> str:
    """A short human summary of a build report."""
    lines = [f"records written: {report['records_written']} of {report['records_read']} read"]
    for split, n in report["drawings_written"].items():
        lines.append(f"  {split}: {n} drawings in {len(report['shards'][split])} shards")
    lines.append(f"bytes written: {report['bytes_written']:,}")
    if report["records_skipped"] or report["drawings_skipped"]:
        lines.append(f"skipped: {len(report['records_skipped'])} records, {len(report['drawings_skipped'])} drawings "
                     f"({', '.join(f'{k}: {v}' for k, v in sorted(report['skipped_by_reason'].items()))})")
        for p in (report["records_skipped"] + report["drawings_skipped"])[:20]:
            lines.append(f"  {p['reason']}")
        more = len(report["records_skipped"]) + len(report["drawings_skipped"]) - 20
        if more > 0:
            lines.append(f"  ... {more} more in build_report.json")
    return "\n".join(lines)


def shard_pattern(folder, names: Optional[Sequence[str]] = None) -> str:
    """Brace pattern covering a split folder's shards (from its sizes.json unless names are given)."""
    folder = Path(folder)
    if names is None:
        names = sorted(json.loads((folder / "sizes.json").read_text()))
    names = sorted(names)
    if not names:
        raise ValueError(f"no shards in {folder}")
    if len(names) == 1:
        return str(folder / names[0])
    prefix = names[0].rsplit("-", 1)[0]
    first, last = names[0].rsplit("-", 1)[1].split(".")[0], names[-1].rsplit("-", 1)[1].split(".")[0]
    return str(folder / f"{prefix}-{{{first}..{last}}}.tar")
