"""The class table (``classes.json``) that the shard builder writes beside the shards, and the rules on it.

``classes.json`` is a JSON list ``[{"id": 0, "code": "07-01", "name": "cups and mugs", "count": 812,
"category": "head"}, ...]`` sorted by id; ``count`` is the number of drawings of that class in that split,
``category`` head/tail (optional). Losses use the counts for class-aware weighting, evaluation uses the names for
zero-shot prompts.

The rules every caller takes from here (none is written anywhere else):

* the head / tail split -- :meth:`ClassTable.head_mask` / :func:`head_class_mask` (the rule itself:
  :mod:`patentclip.shards.head_tail`, which the shard builder applies too): the loss plugins' category
  contrastive term and every head / tail figure of the evaluation;
* the class-balance weights ``w_c = f_c^-beta`` -- :meth:`ClassTable.balance_weights` / :func:`balance_weights`:
  the class-aware losses' sample weights and the class-aware sampler's multiplicities;
* an unknown class id -- :class:`UnknownClassError`, from :meth:`ClassTable.check_id` (one sample) and
  :func:`check_class_ids` (a batch).
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import List, Optional, Sequence

import fsspec
import torch

from open_clip_train.data import expand_urls

from patentclip.shards.head_tail import HEAD_FRACTION, head_tail_split


class UnknownClassError(KeyError, ValueError):
    """A class id (or ids) that the class table does not define.

    A ``KeyError`` (the id is not a key of the table) and a ``ValueError`` (bad input data). ``class_ids`` lists
    the offending ids, ``num_classes`` and ``source`` say what the table defines; the message names the ids, the
    known range and, with ``where``, where the id came from (a sample of a shard, a batch).
    """

    def __init__(self, class_ids, num_classes: int, source: str = "classes.json", where: str = ""):
        if isinstance(class_ids, (list, tuple)):
            self.class_ids = list(class_ids)
            what = f"unknown class id(s) {self.class_ids}"
        else:
            self.class_ids = [class_ids]
            what = f"unknown class id {class_ids}"
        self.num_classes, self.source, self.where = int(num_classes), source, where
        super().__init__(f"{what}{' in ' + where if where else ''}: {source} defines {self.num_classes} classes "
                         f"(ids 0..{self.num_classes - 1}); were the shards built with another classes.json?")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def check_class_ids(class_id: torch.Tensor, num_classes: int, source: str = "classes.json") -> None:
    """Raise :class:`UnknownClassError` for class ids of a batch that the table does not define (instead of an
    index error deep inside a loss)."""
    if class_id.numel() == 0:
        return
    bad = (class_id < 0) | (class_id >= num_classes)
    if bool(bad.any()):
        ids = sorted({int(x) for x in class_id[bad].tolist()})[:10]
        raise UnknownClassError(ids, num_classes, source, "the batch")


def head_class_mask(counts, categories: Optional[Sequence[Optional[str]]] = None,
                    head_fraction: float = HEAD_FRACTION, where: str = "") -> torch.Tensor:
    """Which classes are *head* classes: a ``(C,)`` bool tensor (``False`` = tail), by the rule of
    :mod:`patentclip.shards.head_tail` (given categories decide; else the top ``ceil(0.4 C)`` classes by the
    training frequencies ``counts``, ties by class id, count 0 always tail)."""
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    return torch.tensor(head_tail_split(counts.tolist(), categories, head_fraction, where), dtype=torch.bool)


def balance_weights(counts, beta: float) -> torch.Tensor:
    """DesignCLIP's class-balance weights ``w_c = f_c^-beta`` (``f_c``: the frequency of class c), scaled so that
    ``sum_c f_c w_c = 1``: their mean over the training samples is 1, whatever beta. ``(C,)`` float64; classes
    without training samples get 0 (the caller decides what they stand for).

    The class-aware losses weight a sample of class c by ``w_c``; the class-aware sampler emits each example of
    class c ``w_c`` times on average (so an epoch keeps its length).
    """
    counts = torch.as_tensor(counts).to(torch.float64)
    if (counts < 0).any():
        raise ValueError(f"negative class counts: {counts[counts < 0].tolist()[:10]}")
    present = counts > 0
    if not present.any():
        raise ValueError("class counts are all zero: classes.json has no training samples")
    freq = counts / counts.sum()
    w = torch.zeros_like(freq)
    w[present] = freq[present].pow(-float(beta))
    return w / (freq * w).sum()


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

    def categories(self) -> Optional[List[Optional[str]]]:
        """The ``category`` of every class as classes.json gives it, or None when no class has one."""
        cats = [c.category for c in self.classes]
        return None if all(c is None for c in cats) else cats

    def head_mask(self, train_counts=None, categories: Optional[Sequence[Optional[str]]] = None,
                  head_fraction: float = HEAD_FRACTION) -> torch.Tensor:
        """``(C,)`` bool: which classes are head classes (:func:`head_class_mask`).

        ``train_counts``: the training frequencies (default: this table's counts; give the training table's when
        this is another split's); ``categories``: given categories (default: this table's, when it has them).
        """
        counts = self.counts() if train_counts is None else torch.as_tensor(train_counts, dtype=torch.float64)
        if counts.numel() != len(self):
            raise ValueError(f"{counts.numel()} training counts for {len(self)} classes")
        where = ""
        if categories is None:
            categories, where = self.categories(), self.source
        return head_class_mask(counts, categories, head_fraction, where)

    def balance_weights(self, beta: float) -> torch.Tensor:
        """The class-balance weights ``w_c = f_c^-beta`` of this table's counts (:func:`balance_weights`)."""
        return balance_weights(self.counts(), beta)

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
        """``class_id`` as an int, or :class:`UnknownClassError` when the table does not define it."""
        if not 0 <= int(class_id) < len(self.classes):
            raise UnknownClassError(class_id, len(self.classes), self.source, where)
        return int(class_id)

    @classmethod
    def from_dicts(cls, data, source: str = "<memory>") -> "ClassTable":
        """A table from classes.json's content: a list of ``{id, code, name, count[, category]}`` objects (or
        ``{"classes": [...]}``), e.g. the training class table a checkpoint carries."""
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        try:
            classes = [ClassInfo(int(c["id"]), str(c["code"]), str(c["name"]), int(c.get("count", 0)),
                                 c.get("category")) for c in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a classes.json list of {{id, code, name, count}} objects ({exc})") from None
        return cls(classes, source=source)

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
        return cls.from_dicts(data, source=path)


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
