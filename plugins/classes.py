"""The class table (``classes.json``) that the shard builder writes beside the shards.

``classes.json`` is a JSON list ``[{"id": 0, "code": "07-01", "name": "cups and mugs", "count": 812,
"category": "head"}, ...]`` sorted by id; ``count`` is the number of drawings of that class in that split,
``category`` head/tail (optional). Losses use the counts for
class-aware weighting, evaluation uses the names for zero-shot prompts.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import List, Optional, Sequence

import fsspec
import torch

from open_clip_train.data import expand_urls


class ClassMismatch(ValueError):
    """A sample's class code or name is not the one classes.json gives its class id."""


@dataclass(frozen=True)
class ClassInfo:
    id: int
    code: str
    name: str
    count: int
    category: Optional[str] = None  # "head" / "tail" (shards/build.py's rule), when classes.json has it


class ClassTable:
    """The classes of a shard set, indexed by class id."""

    def __init__(self, classes: Sequence[ClassInfo], source: str = "<memory>"):
        self.classes: List[ClassInfo] = sorted(classes, key=lambda c: c.id)
        self.source = source
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"{source}: class ids must be 0..{len(ids) - 1} without gaps, got {ids[:20]}")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> List[str]:
        return [c.name for c in self.classes]

    @property
    def codes(self) -> List[str]:
        return [c.code for c in self.classes]

    def counts(self) -> torch.Tensor:
        return torch.tensor([c.count for c in self.classes], dtype=torch.float64)

    def check_class(self, class_id: int, code: Optional[str], name: Optional[str], where: str = "") -> int:
        """``check_id``, and the code and name a sample's metadata gives for its class id (when it gives them)
        against this table's: a classes.json of another build, or one whose names were swapped, would otherwise
        train and evaluate every class under another's name. Raises :class:`ClassMismatch`."""
        cid = self.check_id(class_id, where)
        c = self.classes[cid]
        if (code is not None and str(code) != c.code) or (name is not None and str(name) != c.name):
            raise ClassMismatch(
                f"{where + ': ' if where else ''}class id {cid} is {code} {name!r} in the shard but {c.code} "
                f"{c.name!r} in {self.source}: were the shards built with another classes.json, or were its names "
                f"edited? Use the classes.json the shards were built with (--classes-json).")
        return cid

    def check_id(self, class_id: int, where: str = "") -> int:
        if not 0 <= int(class_id) < len(self.classes):
            raise ValueError(
                f"unknown class id {class_id}{' in ' + where if where else ''}: {self.source} defines "
                f"{len(self.classes)} classes (ids 0..{len(self.classes) - 1}); were the shards built with "
                f"another classes.json?"
            )
        return int(class_id)

    @classmethod
    def load(cls, path: str) -> "ClassTable":
        try:
            with fsspec.open(path, "r") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"classes.json not found at {path}: build the shards with `patentclip-shards build` "
                f"(it writes classes.json beside them) or pass --classes-json"
            ) from None
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        try:
            classes = [ClassInfo(int(c["id"]), str(c["code"]), str(c["name"]), int(c.get("count", 0)),
                                 c.get("category")) for c in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a classes.json list of {{id, code, name, count}} objects ({exc})") from None
        return cls(classes, source=path)


def classes_json_beside(shards: str) -> str:
    """The ``classes.json`` in the folder of the first shard of a shard spec (``a/{0..3}.tar::b/...``)."""
    urls, _ = expand_urls(shards)
    return posixpath.join(posixpath.dirname(urls[0]), "classes.json")


def load_class_table(shards: Optional[str], classes_json: Optional[str] = None) -> ClassTable:
    if classes_json:
        return ClassTable.load(classes_json)
    if not shards:
        raise ValueError("need --classes-json or shards to find classes.json beside")
    return ClassTable.load(classes_json_beside(shards))
