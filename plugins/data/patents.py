"""From the samples of a shard group to its examples: patents, view pairs, the sampler's repeats, the shuffle.

Stages, each a generator over the previous one (webdataset style), composed by :func:`group_examples`:

1. :func:`with_meta`: each sample's json decoded once, as ``__meta__``; a json member that does not decode skips
   its sample (counted, logged with the shard URL and the member name).
2. :func:`patents`: runs of adjacent samples with the same patent id (the builder never splits a patent).
3. :func:`pair_views`: one :class:`Example` per drawing; in multi-view mode paired with one other drawing of its
   patent, drawn from (seed, epoch, key), or with None for a patent with a single drawing.
4. :func:`repeat_by_sampler` (training): each example emitted m times (0 drops it), m from the sampler plugin's
   ``multiplicity(seed, epoch, key, class_id)``; the repeats are numbered by ``copy``.
5. :func:`shuffle_group` (training): a permutation seeded by (seed, epoch, group index, first shard's name); then
   the repeats of one drawing are moved at least a batch apart (``samplers.spread_repeats``): no batch holds a
   drawing twice, wherever the group has room for it (else as far apart as any order allows, with a warning).

A group's examples are a list (the shuffle needs all of them), and a position in it is what the loader's resume
state records.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from patentclip.plugins.data import keys
from patentclip.plugins.data.examples import Example
from patentclip.plugins.samplers import spread_repeats
from patentclip.shards import sample_format as SF


def with_meta(samples: Iterable[Dict], skips: Optional[Callable[[BaseException, str], object]] = None
              ) -> Iterator[Dict]:
    for s in samples:
        try:
            meta = SF.decode_json(s.get(SF.JSON))
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if skips is None:
                raise
            skips(exc, f"sample {s['__key__']!r} of {s.get('__url__', '?')}: member {s['__key__']}.{SF.JSON} "
                       f"does not decode")
            continue
        s["__meta__"] = meta
        yield s


def patents(samples: Iterable[Dict]) -> Iterator[List[Dict]]:
    """Runs of adjacent samples of the same patent."""
    run: List[Dict] = []
    for s in samples:
        if run and keys.patent_of(run[0]["__key__"], run[0]["__meta__"]) != keys.patent_of(s["__key__"],
                                                                                            s["__meta__"]):
            yield run
            run = []
        run.append(s)
    if run:
        yield run


def pair_views(runs: Iterable[List[Dict]], *, multiview: bool, seed: int, epoch: int) -> Iterator[Example]:
    for run in runs:
        for s in run:
            if not multiview:
                yield Example(s)
                continue
            others = [o for o in run if o is not s]
            other = others[keys.other_view_index(len(others), seed, epoch, s["__key__"])] if others else None
            yield Example(s, other)


def repeat_by_sampler(examples: Iterable[Example], *, sampler, seed: int, epoch: int,
                      class_id: Callable[[Dict], int]) -> Iterator[Example]:
    """Each example ``multiplicity`` times (``sampler`` None: once), numbered by ``copy``."""
    for ex in examples:
        s = ex.anchor
        cid = class_id(s)  # also checks the class id: an unknown one stops the run here, not in a worker's batch
        m = sampler.multiplicity(seed, epoch, s["__key__"], cid) if sampler is not None else 1
        for c in range(m):
            yield Example(ex.anchor, ex.other, c)


def shuffle_group(examples: Iterable[Example], *, seed: int, epoch: int, group_index: int, group: Sequence[str],
                  batch_size: int) -> List[Example]:
    examples = list(examples)
    perm = list(range(len(examples)))
    # seeded by the shard's file name, not its URL: the same shards on local disk or in S3 give the same run
    keys.group_rng(seed, epoch, group_index, group).shuffle(perm)
    # a drawing's repeats (class-aware sampler) at least a batch apart: never two copies in one batch
    return spread_repeats([examples[i] for i in perm], lambda ex: ex.anchor["__key__"], batch_size)


def group_examples(samples: Iterable[Dict], *, group: Sequence[str], group_index: int, epoch: int, seed: int,
                   is_train: bool, multiview: bool, batch_size: int, sampler=None,
                   class_id: Optional[Callable[[Dict], int]] = None,
                   skips: Optional[Callable[[BaseException, str], object]] = None) -> List[Example]:
    """All examples of one shard group, in the order they are emitted (stages 1-5 of the module docstring);
    ``skips`` counts the samples whose json does not decode (None: such a sample raises)."""
    examples = pair_views(patents(with_meta(samples, skips)), multiview=multiview, seed=seed, epoch=epoch)
    if not is_train:
        return list(examples)
    examples = repeat_by_sampler(examples, sampler=sampler, seed=seed, epoch=epoch, class_id=class_id)
    return shuffle_group(examples, seed=seed, epoch=epoch, group_index=group_index, group=group,
                         batch_size=batch_size)
