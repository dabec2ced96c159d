"""Shared fixtures: one small synthetic patent set and its shards per test session (built, never downloaded)."""
import json
import os
import sys
from pathlib import Path

import pytest

from realdata import realdata_dir

os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def impact_sample() -> Path:
    """The 50 real 2021 USPTO design grants (one folder per patent: grant XML + TIFF sheets)."""
    return realdata_dir() / "impact_sample"


def data_args(train=None, val=None, **kw):
    """The arguments patent-wds reads: patentclip-train's defaults (launch.args.default_args), batch 8, no
    workers, with overrides."""
    from patentclip.launch.args import default_args

    return default_args(**{"train_data": train, "val_data": val, "batch_size": 8, "workers": 0, **kw})


def shard_pattern(split_dir: Path) -> str:
    from patentclip.shards.build import shard_pattern as pattern

    return pattern(split_dir)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """~70 patents x 4 views of 5 classes at 64 px, split 80/20 by patent, 40 drawings per shard."""
    from patentclip.shards.build import build_shards
    from patentclip.shards.synth import generate_synthetic_patents

    root = tmp_path_factory.mktemp("synthetic")
    manifest = generate_synthetic_patents(root / "patents", num_patents=70, num_classes=5, image_size=64, seed=0)
    report = build_shards(manifest, root / "shards", samples_per_shard=40, seed=0, progress=False)
    return {
        "root": root,
        "manifest": manifest,
        "report": report,
        "train": shard_pattern(root / "shards" / "train"),
        "val": shard_pattern(root / "shards" / "val"),
        "train_dir": root / "shards" / "train",
        "val_dir": root / "shards" / "val",
    }


def run_cli(module: str, *argv, timeout=600, env=None):
    """Run ``python -m module argv`` in a fresh process; returns CompletedProcess (text)."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 for the whole session (tests/s3_server.py)."""
    from s3_server import S3Server

    server = S3Server(str(tmp_path_factory.mktemp("s3"))).start()
    yield server
    server.stop()


@pytest.fixture()
def small_disk(tmp_path):
    """``small_disk(mib)``: a real filesystem of that size (tmpfs), mounted for the test (tests/small_disk.py: as
    root, with passwordless sudo, or unprivileged in a user namespace); returns where it is reached."""
    from small_disk import MountImpossible, SmallDisk

    disks = []

    def make(mib: int) -> Path:
        disk = SmallDisk(tmp_path / f"disk{len(disks)}", mib)
        try:
            path = disk.mount()
        except MountImpossible as exc:
            pytest.skip(f"cannot mount a {mib} MiB tmpfs for the full-disk test (root, passwordless sudo or "
                        f"unprivileged user namespaces needed): {exc}")
        disks.append(disk)
        return path

    yield make
    for disk in disks:
        disk.unmount()


@pytest.fixture(scope="session")
def tiny_caption_models(tmp_path_factory):
    """A tiny LLaVA (captioner) and a tiny Llama (language model) with a locally trained tokenizer, written as
    model folders by patentclip-caption's own tiny-models code; loaded offline (HF_HUB_OFFLINE=1)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from patentclip.shards.captioning.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))
