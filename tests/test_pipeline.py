"""The patent-wds dataset plugin: batch contents, determinism, caption draws, bad input."""
import io
import json
import tarfile

import pytest
import torch

from conftest import data_args
from patentclip.plugins.classes import load_class_table
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.data.batch import IMAGE
from patentclip.plugins.data.examples import grant_day
from patentclip.plugins.registry import DATASETS, SAMPLERS
from patentclip.plugins.seeding import stable_index

load_builtin_plugins()


@pytest.fixture(scope="module")
def tiny_model_parts():
    import open_clip

    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    _, _, preprocess = open_clip.create_model_and_transforms("patentclip-tiny")
    return preprocess, open_clip.get_tokenizer("patentclip-tiny")


def build(args, is_train, parts, table, epoch=0):
    preprocess, tokenizer = parts
    return DATASETS.get("patent-wds")(args, preprocess, is_train, epoch=epoch, tokenizer=tokenizer, class_table=table)


def collect(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        if n is not None and i >= n:
            break
        out.append(b)
    return out


def test_registry_has_builtin_dataset_and_sampler():
    assert "patent-wds" in DATASETS and "natural" in SAMPLERS


def test_train_batches_contents(synthetic_shards, tiny_model_parts):
    table = load_class_table(synthetic_shards["train"])
    info = build(data_args(train=synthetic_shards["train"]), True, tiny_model_parts, table)
    batches = collect(info.dataloader)
    assert len(batches) == info.dataloader.num_batches
    b = batches[0]
    assert b["image"].shape == (8, 1, 64, 64) and b["image"].dtype == torch.uint8  # grey pixels (uint8 transport)
    x = info.dataloader.image_transport.images(b, IMAGE, "cpu", torch.float32)  # normalised as the step does it
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert b["text"].shape == (8, 40) and b["text"].dtype == torch.long
    assert b["class_id"].dtype == torch.long and int(b["class_id"].max()) < len(table)
    assert b["grant_day"].min() > 0
    assert len(b["view"]) == len(b["patent_id"]) == len(b["key"]) == 8
    assert all(k.startswith(p + "_") for k, p in zip(b["key"], b["patent_id"]))


def test_same_seed_same_batches_other_epoch_other_order(synthetic_shards, tiny_model_parts):
    table = load_class_table(synthetic_shards["train"])
    keys = lambda info: [k for b in collect(info.dataloader) for k in b["key"]]  # noqa: E731
    a = build(data_args(train=synthetic_shards["train"]), True, tiny_model_parts, table)
    b = build(data_args(train=synthetic_shards["train"]), True, tiny_model_parts, table)
    ka, kb = keys(a), keys(b)
    assert ka == kb
    b.set_epoch(1)
    assert keys(b) != ka
    c = build(data_args(train=synthetic_shards["train"], seed=1), True, tiny_model_parts, table)
    assert keys(c) != ka
    # identical tensors too, not only keys
    x = collect(build(data_args(train=synthetic_shards["train"]), True, tiny_model_parts, table).dataloader, 1)[0]
    y = collect(build(data_args(train=synthetic_shards["train"]), True, tiny_model_parts, table).dataloader, 1)[0]
    assert torch.equal(x["image"], y["image"]) and torch.equal(x["text"], y["text"])


def test_val_pipeline_reads_every_sample_once_with_first_caption(synthetic_shards, tiny_model_parts):
    table = load_class_table(synthetic_shards["val"])
    info = build(data_args(val=synthetic_shards["val"]), False, tiny_model_parts, table)
    keys = [k for b in collect(info.dataloader) for k in b["key"]]
    sizes = json.loads((synthetic_shards["val_dir"] / "sizes.json").read_text())
    assert len(keys) == len(set(keys)) == sum(sizes.values())


def test_caption_draws_follow_seed_epoch_key(synthetic_shards, tiny_model_parts):
    """The caption of a drawing is drawn from its captions by (seed, epoch, key): same run -> same tokens,
    another epoch -> other draws, --caption-choice first -> always the first caption."""
    table = load_class_table(synthetic_shards["train"])

    def texts(epoch, **kw):
        info = build(data_args(train=synthetic_shards["train"], **kw), True, tiny_model_parts, table, epoch=epoch)
        return {k: t.tolist() for b in collect(info.dataloader) for k, t in zip(b["key"], b["text"])}

    e0, e0b, e1 = texts(0), texts(0), texts(1)
    assert e0 == e0b
    common = set(e0) & set(e1)
    assert sum(e0[k] != e1[k] for k in common) > len(common) // 3
    first = texts(0, caption_choice="first")
    assert first == texts(1, caption_choice="first") or set(first) != set(texts(1, caption_choice="first"))
    assert stable_index(7, "a", 1) == stable_index(7, "a", 1) and 0 <= stable_index(7, "b") < 7


def test_grant_day():
    assert grant_day("1970-01-02") == 1 and grant_day("2019-01-01") == 17897
    assert grant_day(None) == -1 and grant_day("not a date") == -1


def test_unknown_class_id_is_a_clear_error(tmp_path, tiny_model_parts, synthetic_shards):
    """A shard whose class id is outside classes.json stops with the sample, shard and class table named."""
    src = sorted(synthetic_shards["val_dir"].glob("*.tar"))[0]
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(".cls"):
                data = b"99"
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    table = load_class_table(synthetic_shards["val"])
    info = build(data_args(val=str(bad)), False, tiny_model_parts, table)
    with pytest.raises(ValueError, match=r"unknown class id 99 in sample '.*' of .*bad-000000.tar.*classes.json"):
        collect(info.dataloader)


def test_too_few_shards_for_workers_is_a_clear_error(synthetic_shards, tiny_model_parts):
    table = load_class_table(synthetic_shards["train"])
    one = str(sorted(synthetic_shards["train_dir"].glob("*.tar"))[0])
    with pytest.raises(ValueError, match="training shards cannot feed"):
        build(data_args(train=one, workers=2, train_num_samples=10), True, tiny_model_parts, table)


def test_missing_classes_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes.json not found"):
        load_class_table(str(tmp_path / "train-{000000..000001}.tar"))


def test_shards_stored_much_larger_than_the_model_needs_are_warned_about(synthetic_shards, caplog):
    """64-px drawings for a model of 16 px (needs 19) warn and say how to rebuild; for 64 px (needs 74) not; the
    builder warns at the start of training, with the model's size read from its preprocess."""
    import open_clip

    from patentclip.plugins.data.stored_size import check_stored_size, model_image_size, stored_side
    from patentclip.plugins.models import register_model_configs
    from patentclip.shards.images import storage_side

    register_model_configs()

    first = str(sorted(synthetic_shards["train_dir"].glob("*.tar"))[0])
    assert stored_side(first) == 64
    assert storage_side(224) == 256 and storage_side(336) == 384
    msg = check_stored_size(first, 16)
    assert msg and "64 px" in msg and "--train-image-size 16" in msg
    assert check_stored_size(first, 64) is None and check_stored_size(first, None) is None

    _, preprocess, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    small = open_clip.image_transform(16, is_train=True)
    assert model_image_size(preprocess) == 64 and model_image_size(small) == 16
    table = load_class_table(synthetic_shards["train"])
    with caplog.at_level("WARNING"):
        DATASETS.get("patent-wds")(data_args(synthetic_shards["train"]), small, True,
                                   tokenizer=open_clip.get_tokenizer("patentclip-tiny"), class_table=table)
    assert "--train-image-size 16" in caplog.text
