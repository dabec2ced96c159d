"""The named points where patentclip patches open_clip_train, and nothing else.

open_clip_torch 3.3's training extra pins webdataset <= 0.2.86. webdataset 1.x emits an empty ``{}``
marker at the end of every shard, on which open_clip_train's ``group_by_keys_nothrow`` raises
``KeyError: 'fname'``. ``apply()`` replaces that one function on ``open_clip_train.data`` with a compatible
version that treats a sample without ``fname`` as "flush the current sample". ``tarfile_to_samples_nothrow``
looks the function up at call time, so open_clip's own ``get_wds_dataset`` then works with webdataset 1.x.

``tests/test_openclip_compat.py`` fails loudly if a new open_clip moves any of the names listed in
``PATCH_POINTS`` or ``REUSED_NAMES``.
"""
from __future__ import annotations

import open_clip_train.data as oc_data
from webdataset.tariterators import base_plus_ext, valid_sample

# module -> attribute that apply() replaces
PATCH_POINTS = {"open_clip_train.data": ["group_by_keys_nothrow"]}

# open_clip / open_clip_train names that patentclip imports and reuses as they are
REUSED_NAMES = {
    "open_clip": ["create_model_and_transforms", "get_tokenizer", "build_zero_shot_classifier", "ClipLoss",
                  "get_input_dtype", "add_model_config", "list_models", "get_model_config", "get_pretrained_cfg",
                  "list_pretrained_tags_by_model", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD"],
    # the starting-weights machinery (plugins/pretrained.py) and the timm towers
    "open_clip.factory": ["load_state_dict"],
    "open_clip.constants": ["HF_WEIGHTS_NAME", "HF_SAFE_WEIGHTS_NAME", "HF_CONFIG_NAME"],
    "open_clip.pretrained": ["_get_safe_alternatives"],
    "open_clip.timm_model": ["TimmModel"],
    "open_clip.loss": ["gather_features", "SigLipLoss"],
    "open_clip_train.params": ["parse_args"],
    "open_clip_train.distributed": ["init_distributed_device", "is_master", "broadcast_object",
                                    "world_info_from_env"],
    "open_clip_train.scheduler": ["cosine_lr", "const_lr", "const_lr_cooldown"],
    "open_clip_train.logger": ["setup_logging"],
    "open_clip_train.data": ["expand_urls", "get_dataset_size", "SharedEpoch",
                             "DataInfo", "detshuffle2", "ResampledShards2", "tarfile_to_samples_nothrow",
                             "log_and_continue", "filter_no_caption_or_no_image", "get_wds_dataset"],
    "open_clip_train.main": ["main", "random_seed"],
    "open_clip_train.train": ["train_one_epoch", "AverageMeter"],
}

_original_group_by_keys = oc_data.group_by_keys_nothrow


def group_by_keys_nothrow(data, keys=base_plus_ext, lcase=True, suffixes=None, handler=None):
    """open_clip_train's ``group_by_keys_nothrow``, tolerant of webdataset 1.x end-of-shard markers.

    A file sample without ``fname`` (webdataset 1.x yields ``{}`` between shards) flushes the sample being
    assembled, so a sample never spans two shards.
    """
    current_sample = None
    for filesample in data:
        assert isinstance(filesample, dict)
        if "fname" not in filesample:
            if valid_sample(current_sample):
                yield current_sample
            current_sample = None
            continue
        fname, value = filesample["fname"], filesample["data"]
        prefix, suffix = keys(fname)
        if prefix is None:
            continue
        if lcase:
            suffix = suffix.lower()
        if current_sample is None or prefix != current_sample["__key__"] or suffix in current_sample:
            if valid_sample(current_sample):
                yield current_sample
            current_sample = dict(__key__=prefix, __url__=filesample["__url__"])
        if suffixes is None or suffix in suffixes:
            current_sample[suffix] = value
    if valid_sample(current_sample):
        yield current_sample


def apply() -> None:
    """Install the compatibility fix (idempotent)."""
    oc_data.group_by_keys_nothrow = group_by_keys_nothrow


def is_applied() -> bool:
    return oc_data.group_by_keys_nothrow is group_by_keys_nothrow
