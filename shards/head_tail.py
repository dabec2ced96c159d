"""The head / tail split of the design classes (LLM-informed paper, Figure 1): the one rule, written once.

1. If every class has a category ``"head"`` or ``"tail"`` (the ``category`` field of ``classes.json``; case and
   surrounding spaces ignored), those categories decide. Some classes with a category and others without, or
   another value, is an error rather than a silent mix of two rules.
2. Otherwise the paper's rule: rank the classes by their count (descending; equal counts: smaller index first);
   the first ``ceil(head_fraction * C)`` of the ``C`` classes are head (``head_fraction`` = 0.4: "the top 40% of
   classes (head) and the bottom 60% (tail)"), the rest tail. A class with count 0 is always tail.

For the split to mean what the paper means, the counts are *training* frequencies. The shard builder applies
the rule to the planned drawings of every class and writes the result into ``classes.json``; the class table
(:meth:`patentclip.plugins.classes.ClassTable.head_mask`, the interface training and evaluation use) applies it
to a table's counts or to the training counts a checkpoint carries, so the loss plugins (L_cat) and every
head / tail figure of the evaluation split the classes the same way. It lives here, free of torch, because the
builder (and each of its worker processes) must not import torch to write ``classes.json``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

#: The LLM-informed paper's split (Figure 1): the 40% most frequent classes are "head".
HEAD_FRACTION = 0.4
CATEGORIES = ("head", "tail")


def head_tail_split(counts: Sequence[float], categories: Optional[Sequence[Optional[str]]] = None,
                    head_fraction: float = HEAD_FRACTION, where: str = "") -> List[bool]:
    """Which classes are head classes (``True``) and which tail (``False``), by the rule of the module docstring.

    ``counts[i]``: the training frequency of class ``i``; ``categories[i]``: its given category or None/"";
    ``where`` (e.g. the classes.json path) prefixes the error messages.
    """
    prefix = f"{where}: " if where else ""
    counts = [float(c) for c in counts]
    n = len(counts)
    if categories is not None:
        cats = [str(c or "").strip().lower() for c in categories]
        if len(cats) != n:
            raise ValueError(f"{prefix}{len(cats)} categories for {n} classes")
        given = [bool(c) for c in cats]
        if cats and all(given):
            bad = sorted({c for c in cats if c not in CATEGORIES})
            if bad:
                raise ValueError(f"{prefix}class category must be 'head' or 'tail', got {bad}")
            return [c == "head" for c in cats]
        if any(given):
            missing = [i for i, g in enumerate(given) if not g][:10]
            raise ValueError(f"{prefix}some classes have a 'category' and some do not (e.g. ids {missing}); give it "
                             f"for all classes or for none")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in [0, 1], got {head_fraction}")
    n_head = min(n, math.ceil(head_fraction * n - 1e-9))
    order = sorted(range(n), key=lambda i: (-counts[i], i))
    head = [False] * n
    for i in order[:n_head]:
        head[i] = counts[i] > 0
    return head
