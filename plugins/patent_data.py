"""The streaming patent data pipeline (dataset plugin ``patent-wds``).

Built from open_clip_train's webdataset building blocks (shard lists, deterministic shuffles, node/worker
splitting, sizes.json handling, the nothrow tar reader) with a richer sample than open_clip's
``(image, text)`` tuple. A batch is a dict:

    image      float tensor (B, 3, H, W), after open_clip's preprocess
    text       long tensor (B, context_length): one caption per use, tokenized
    class_id   long tensor (B,)
    grant_day  long tensor (B,): grant date as days since 1970-01-01 (-1 if unknown)
    view       list[str]   e.g. "front", "perspective"
    patent_id  list[str]
    key        list[str]   the sample's webdataset key

Randomness is a pure function of the seed and the epoch: the shard shuffle and the sample shuffle are
open_clip's ``detshuffle2`` seeded with ``seed + epoch``, and the caption drawn for a sample is chosen by a
hash of ``(seed, epoch, key)``, so two runs with the same seed see the same batches.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
from typing import Callable, Dict, List, Optional

import torch
import webdataset as wds
from open_clip_train import data as oc_data
from open_clip_train.data import (DataInfo, ResampledShards2, SharedEpoch, detshuffle2, expand_urls,
                                  get_dataset_size, log_and_continue)

from patentclip.plugins import openclip_compat
from patentclip.plugins.classes import ClassTable
from patentclip.plugins.registry import DATASETS, SAMPLERS

SHARD_SHUFFLE_SIZE = 2000
SHARD_SHUFFLE_INITIAL = 500
SAMPLE_SHUFFLE_SIZE = 5000
SAMPLE_SHUFFLE_INITIAL = 1000

_EPOCH0 = _dt.date(1970, 1, 1)


def stable_index(n: int, *parts) -> int:
    """A deterministic index in [0, n) from the given parts (same on every machine and process)."""
    if n <= 1:
        return 0
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % n


def grant_day(date: Optional[str]) -> int:
    """ISO date -> days since 1970-01-01; -1 when absent or unparsable."""
    if not date:
        return -1
    try:
        return (_dt.date.fromisoformat(str(date)[:10]) - _EPOCH0).days
    except ValueError:
        return -1


def collate_patent_batch(samples: List[Dict]) -> Dict:
    """Stack tensors, turn ints into a long tensor, keep strings as lists."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if torch.is_tensor(vals[0]):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], (int, bool)):
            out[k] = torch.tensor(vals, dtype=torch.long)
        else:
            out[k] = vals
    return out


class PatentExample:
    """Turns a decoded webdataset sample into a training/eval example (a picklable pipeline callable)."""

    def __init__(self, preprocess: Callable, tokenizer: Callable, class_table: ClassTable, seed: int,
                 epoch_fn: Callable[[], int], random_caption: bool):
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.class_table = class_table
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.random_caption = random_caption

    def caption(self, key: str, captions: List[str]) -> str:
        if not self.random_caption:
            return captions[0]
        return captions[stable_index(len(captions), "caption", self.seed, self.epoch_fn(), key)]

    def __call__(self, sample: Dict) -> Dict:
        key = sample["__key__"]
        where = f"sample {key!r} of {sample.get('__url__', '?')}"
        image = None
        for ext in ("png", "jpg", "jpeg", "webp"):
            if ext in sample:
                image = sample[ext]
                break
        if image is None:
            raise ValueError(f"{where} has no image (png/jpg/jpeg/webp)")
        meta = sample.get("json") or {}
        captions = [c for c in (meta.get("captions") or []) if c] or ([sample["txt"]] if sample.get("txt") else [])
        if not captions:
            raise ValueError(f"{where} has no caption (txt or json captions)")
        if "cls" in sample:
            class_id = int(sample["cls"])
        elif "class_id" in meta:
            class_id = int(meta["class_id"])
        else:
            raise ValueError(f"{where} has no class id (cls or json class_id)")
        self.class_table.check_id(class_id, where)
        text = self.caption(key, captions)
        return {
            "image": self.preprocess(image),
            "text": self.tokenizer([text])[0],
            "class_id": class_id,
            "grant_day": grant_day(meta.get("grant_date")),
            "view": str(meta.get("view", "")),
            "patent_id": str(meta.get("patent_id", key.rsplit("_", 1)[0])),
            "key": key,
        }


def _has_image(sample: Dict) -> bool:
    return any(ext in sample for ext in ("png", "jpg", "jpeg", "webp"))


@DATASETS.register("patent-wds")
def build_patent_dataset(args, preprocess_img, is_train: bool, epoch: int = 0, tokenizer=None,
                         class_table: Optional[ClassTable] = None, floor: bool = False) -> DataInfo:
    """The patent pipeline for ``args.train_data`` (is_train) or ``args.val_data``; returns open_clip's DataInfo.

    Flags keep open_clip's meaning: ``--train-num-samples``, ``--dataset-resampled``,
    ``--train-data-upsampling-factors``, ``::``-joined sources, ``--workers``, ``--batch-size``, ``--seed``.
    """
    openclip_compat.apply()
    input_shards = args.train_data if is_train else args.val_data
    if not input_shards:
        raise ValueError("no shards given (--train-data / --val-data)")
    if class_table is None:
        raise ValueError("the patent pipeline needs the class table (classes.json)")
    resampled = getattr(args, "dataset_resampled", False) and is_train
    shared_epoch = SharedEpoch(epoch=epoch)

    num_shards = None
    if is_train:
        if args.train_num_samples is not None:
            num_samples = args.train_num_samples
        else:
            num_samples, num_shards = get_dataset_size(input_shards)
            if not num_samples:
                raise RuntimeError(
                    f"cannot tell the number of training samples of {input_shards}: no sizes.json beside the "
                    f"shards; pass --train-num-samples")
    else:
        num_samples = args.val_num_samples or get_dataset_size(input_shards)[0] or 0

    if is_train and args.train_data_upsampling_factors is not None and not resampled:
        raise ValueError("--train-data-upsampling-factors needs --dataset-resampled (as in open_clip)")

    if resampled:
        pipeline = [ResampledShards2(input_shards, weights=args.train_data_upsampling_factors,
                                     deterministic=True, epoch=shared_epoch)]
    else:
        pipeline = [wds.SimpleShardList(expand_urls(input_shards)[0])]

    if is_train:
        if not resampled:
            pipeline += [
                detshuffle2(bufsize=SHARD_SHUFFLE_SIZE, initial=SHARD_SHUFFLE_INITIAL, seed=args.seed,
                            epoch=shared_epoch),
                wds.split_by_node,
                wds.split_by_worker,
            ]
        sampler = SAMPLERS.build(getattr(args, "sampler", "natural"), args, class_table, shared_epoch.get_value)
        pipeline += [
            oc_data.tarfile_to_samples_nothrow,
            sampler,
            detshuffle2(bufsize=SAMPLE_SHUFFLE_SIZE, initial=SAMPLE_SHUFFLE_INITIAL, seed=args.seed,
                        epoch=shared_epoch),
        ]
    else:
        pipeline += [wds.split_by_worker, oc_data.tarfile_to_samples_nothrow]

    example = PatentExample(preprocess_img, tokenizer, class_table, args.seed, shared_epoch.get_value,
                            random_caption=is_train and getattr(args, "caption_choice", "random") == "random")
    pipeline += [
        wds.select(_has_image),
        wds.decode("pilrgb", handler=log_and_continue),
        wds.map(example),
        wds.batched(args.batch_size, collation_fn=collate_patent_batch, partial=not is_train),
    ]
    dataset = wds.DataPipeline(*pipeline)

    if is_train:
        if not resampled:
            num_shards = num_shards or len(expand_urls(input_shards)[0])
            if num_shards < max(1, args.workers) * args.world_size:
                raise ValueError(
                    f"{num_shards} training shards cannot feed {max(1, args.workers)} data-loader workers on "
                    f"{args.world_size} ranks: build more shards (smaller --samples-per-shard) or use fewer --workers")
        round_fn = math.floor if floor else math.ceil
        global_batch_size = args.batch_size * args.world_size
        num_batches = round_fn(num_samples / global_batch_size)
        num_workers = max(1, args.workers)
        num_worker_batches = round_fn(num_batches / num_workers)
        num_batches = num_worker_batches * num_workers
        num_samples = num_batches * global_batch_size
        dataset = dataset.with_epoch(num_worker_batches)
    else:
        num_batches = math.ceil(num_samples / args.batch_size) if num_samples else 0

    dataloader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=args.workers,
                               persistent_workers=is_train and args.workers > 0)
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_samples
    logging.debug("patent-wds %s: %d samples, %d batches", "train" if is_train else "val", num_samples, num_batches)
    return DataInfo(dataloader=dataloader, shared_epoch=shared_epoch)
