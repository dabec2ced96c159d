"""The plan of a shard build, from the records alone: class ids, head/tail categories, the split of each patent,
the order of the patents in a split, the patents of each shard, and each shard job's fingerprint (what makes a
finished shard reusable). The rules are stated in :mod:`patentclip.shards.build`'s docstring, steps 2 and 4; the
plan does not depend on the number of workers, so neither do the shards."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from patentclip.plugins.seeding import uniform01

from .head_tail import HEAD_FRACTION, head_tail_split
from .images import ImageOptions
from .manifest import PatentRecord

#: Bumped when the shard contents for the same input and flags change (3: caption_provenance from captions files;
#: 4: large JPEG sources decoded at a reduced DCT scale, shards/images.py).
FORMAT_VERSION = 4


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


def shard_fingerprint(job: ShardJob, settings_part: str, captions_id: Optional[List]) -> str:
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
