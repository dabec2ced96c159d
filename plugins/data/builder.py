"""The registered dataset plugin ``patent-wds``: open_clip's flags to a :class:`PatentLoader`.

open_clip's flags keep their meaning: ``--train-data`` (``::``-joined sources, brace patterns, local paths or
any fsspec URL), ``--train-num-samples``, ``--dataset-resampled``, ``--train-data-upsampling-factors``,
``--workers``, ``--batch-size``, ``--seed``; patentclip adds ``--sampler``, ``--multiview``, ``--caption-choice``,
``--shuffle-group-shards``, ``--image-transport`` and ``--image-resize`` (training only). Training: every worker
gets the same batch quota, so every rank takes the same number of steps (rounded up as open_clip does, down with
``floor``); evaluation reads every sample once. Rank 0 warns when the training shards store drawings much larger than the model needs
(stored_size.py).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

from open_clip_train.data import DataInfo, SharedEpoch, expand_urls

from patentclip.plugins import remote_io
from patentclip.plugins.classes import ClassTable
from patentclip.plugins.data.loader import PatentLoader
from patentclip.plugins.data.stored_size import check_stored_size, model_image_size
from patentclip.plugins.data.stream import PatentStream
from patentclip.plugins.data.tars import dataset_size
from patentclip.plugins.image_transport import ImageTransport
from patentclip.plugins.registry import DATASETS, SAMPLERS


@DATASETS.register("patent-wds")
def build_patent_dataset(args, preprocess_img, is_train: bool, epoch: int = 0, tokenizer=None,
                         class_table: Optional[ClassTable] = None, floor: bool = False) -> DataInfo:
    """The patent pipeline for ``args.train_data`` (is_train) or ``args.val_data``; returns open_clip's DataInfo
    whose ``dataloader`` is a :class:`PatentLoader` (``num_batches``, ``num_samples``, ``state_dict()``,
    ``image_transport``). ``args`` holds every flag (a run's, or :func:`patentclip.launch.args.default_args` with
    overrides outside a run): the parser owns the defaults."""
    remote_io.register_fsspec_gopen()
    input_shards = args.train_data if is_train else args.val_data
    if not input_shards:
        raise ValueError("no shards given (--train-data / --val-data)")
    if class_table is None:
        raise ValueError("the patent pipeline needs the class table (classes.json)")
    resampled = bool(args.dataset_resampled) and is_train
    weights = args.train_data_upsampling_factors if is_train else None
    if weights is not None and not resampled:
        raise ValueError("--train-data-upsampling-factors needs --dataset-resampled (as in open_clip)")
    urls, url_weights = expand_urls(input_shards, weights)
    shared_epoch = SharedEpoch(epoch=epoch)
    workers = int(args.workers)
    world_size = int(args.world_size) if is_train else 1
    rank = int(args.rank) if is_train else 0

    if is_train:
        if args.train_num_samples is not None:
            num_samples = args.train_num_samples
        else:
            num_samples, _ = dataset_size(input_shards)
            if not num_samples:
                raise RuntimeError(f"cannot tell the number of training samples of {input_shards}: no sizes.json "
                                   f"beside the shards; pass --train-num-samples")
        if not resampled and len(urls) < max(1, workers) * world_size:
            raise ValueError(
                f"{len(urls)} training shards cannot feed {max(1, workers)} data-loader workers on {world_size} "
                f"ranks: build more shards (smaller --samples-per-shard) or use fewer --workers")
        round_fn = math.floor if floor else math.ceil
        global_batch_size = args.batch_size * world_size
        num_batches = round_fn(num_samples / global_batch_size)
        num_worker_batches = round_fn(num_batches / max(1, workers))
        num_batches = num_worker_batches * max(1, workers)
        num_samples = num_batches * global_batch_size
    else:
        num_samples = args.val_num_samples or dataset_size(input_shards)[0] or 0
        num_batches = math.ceil(num_samples / args.batch_size) if num_samples else 0
        num_worker_batches = None

    if is_train and rank == 0:
        check_stored_size(urls[0], model_image_size(preprocess_img))  # warns when stored much larger than needed
    sampler = SAMPLERS.build(args.sampler, args, class_table) if is_train else None
    # the one decision "uint8 or float" for this loader's images: the workers run its first half, the consumer
    # (step, evaluation) the second, through loader.image_transport
    transport = ImageTransport.choose(args.image_transport, preprocess_img)
    dataset = PatentStream(
        urls, is_train=is_train, batch_size=args.batch_size, seed=int(args.seed), rank=rank,
        world_size=world_size, shared_epoch=shared_epoch, class_table=class_table, preprocess=preprocess_img,
        tokenizer=tokenizer, image_transport=transport, sampler=sampler,
        multiview=bool(args.multiview) and is_train,
        random_caption=args.caption_choice == "random",
        group_shards=int(args.shuffle_group_shards), num_worker_batches=num_worker_batches,
        resampled=resampled, weights=url_weights,
        max_unreadable_shards=float(args.max_unreadable_shards),
        image_resize=args.image_resize if is_train else "pil")
    loader = PatentLoader(dataset, workers, num_batches, num_samples)
    logging.debug("patent-wds %s: %d samples, %d batches", "train" if is_train else "val", num_samples, num_batches)
    return DataInfo(dataloader=loader, shared_epoch=shared_epoch)
