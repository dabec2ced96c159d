"""The named points where patentclip reuses or patches open_clip: fail loudly if a new open_clip moves them."""
import importlib
import inspect

import pytest

from patentclip.plugins import openclip_compat


@pytest.mark.parametrize("module,names", sorted({**openclip_compat.REUSED_NAMES,
                                                 **openclip_compat.PATCH_POINTS}.items()))
def test_reused_and_patched_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, (f"open_clip moved {module}.{missing}: patentclip reuses/patches these names; "
                         f"update patentclip.plugins.openclip_compat and its callers")


def test_signatures_patentclip_relies_on():
    from open_clip_train import data, train

    assert list(inspect.signature(data.group_by_keys_nothrow).parameters)[:1] == ["data"]
    assert "handler" in inspect.signature(data.tarfile_to_samples_nothrow).parameters
    # open_clip's training step still unpacks (images, texts): the reason patentclip has its own step
    assert "images, texts = batch" in inspect.getsource(train.train_one_epoch)
    from open_clip import ClipLoss
    assert {"local_loss", "gather_with_grad", "rank", "world_size"} <= set(inspect.signature(ClipLoss).parameters)
    assert hasattr(ClipLoss, "get_logits") and hasattr(ClipLoss, "get_ground_truth")


def test_patch_is_applied_and_handles_end_of_shard_marker():
    from open_clip_train import data

    openclip_compat.apply()
    assert openclip_compat.is_applied()
    assert data.group_by_keys_nothrow is openclip_compat.group_by_keys_nothrow
    files = [
        {"fname": "a_00.png", "data": b"1", "__url__": "s0"}, {"fname": "a_00.txt", "data": b"t", "__url__": "s0"},
        {},  # webdataset 1.x end-of-shard marker
        {"fname": "a_00.png", "data": b"2", "__url__": "s1"}, {"fname": "a_00.txt", "data": b"u", "__url__": "s1"},
    ]
    samples = list(data.group_by_keys_nothrow(iter(files)))
    assert [(s["__key__"], s["__url__"], s["png"]) for s in samples] == [("a_00", "s0", b"1"), ("a_00", "s1", b"2")]


def test_original_open_clip_grouping_breaks_on_webdataset_1x_marker():
    """Documents why the patch exists: open_clip 3.3's own grouping raises on webdataset 1.x's `{}` marker.
    If this starts passing without the patch, open_clip fixed it and the patch can go."""
    files = [{"fname": "a_00.png", "data": b"1", "__url__": "s0"}, {}]
    with pytest.raises(KeyError):
        list(openclip_compat._original_group_by_keys(iter(files)))
