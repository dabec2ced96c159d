"""Run vanilla open_clip training (``open_clip_train.main``) on patentclip shards, unchanged.

    python -m patentclip.launch.openclip_vanilla --train-data 'shards/train/train-{000000..000003}.tar' \\
        --dataset-type webdataset --model patentclip-tiny --batch-size 32 --epochs 1 --precision fp32

This is open_clip's own ``main`` with exactly two additions, both documented in the README: patentclip's
model configs are registered (so ``--model patentclip-tiny`` resolves), and the webdataset-1.x
compatibility fix of :mod:`patentclip.plugins.openclip_compat` is applied. It is the baseline the
benchmarks compare against, and the proof that the shards stay readable by vanilla open_clip.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from patentclip.plugins import openclip_compat
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    openclip_compat.apply()
    from open_clip_train.main import main as openclip_main

    rc = openclip_main(list(sys.argv[1:] if argv is None else argv))
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
