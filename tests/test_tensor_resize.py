"""Issue 21: ``--image-resize tensor`` (off by default). The same crop boxes and flips as open_clip's PIL path on
the uint8 pixels, pixels within rounding of PIL's bicubic, the flag carried through the pipeline, and refused
(clearly) where it cannot apply."""
import pytest
import torch

from conftest import data_args
from patentclip.launch.args import default_args, parse_train_args, validate_train_args
from patentclip.plugins.augment import add_augmentations
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.classes import load_class_table
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess, TensorResizeRefused
from patentclip.plugins.image_transport import ImageTransport
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.registry import DATASETS
from test_grey_preprocess import drawing, transforms

load_builtin_plugins()
register_model_configs()


def test_tensor_path_crops_the_same_box_and_is_within_rounding_of_pil():
    import torchvision.transforms as T

    train, val = transforms()
    for pre in (add_augmentations(train, hflip=0.5, gridmask=0.5), val):
        transport = ImageTransport.choose("uint8", pre)
        pil, tensor = GreyAwarePreprocess(pre, transport), GreyAwarePreprocess(pre, transport, "tensor")
        assert pil.resize == "pil" and tensor.resize == "tensor"
        for size in ((600, 420), (256, 230), (300, 300)):
            img = drawing(size)
            for seed in range(4):
                torch.manual_seed(seed)
                want = pil(img)
                after_want = torch.rand(())
                torch.manual_seed(seed)
                got = tensor(img)
                assert torch.rand(()) == after_want      # the same random draws (crop box, flip, GridMask)
                assert got.dtype == torch.uint8 and got.shape == want.shape == (1, 224, 224)
                d = (got.to(torch.int16) - want.to(torch.int16)).abs()
                assert d.float().mean() < 1.0            # resampling rounding, not another crop
                assert (d > 1).float().mean() < 0.05
                assert not torch.equal(got, want) or size == (300, 300)   # not silently the PIL path
        # a crop box off by a few pixels would be far from PIL's: check the test can tell
        shifted = T.functional.pil_to_tensor(drawing((600, 420)).crop((8, 8, 608, 428)).resize((224, 224), 3))
        torch.manual_seed(0)
        base = GreyAwarePreprocess(val, ImageTransport.choose("uint8", val), "tensor")(drawing((600, 420)))
        assert (shifted.to(torch.int16) - base.to(torch.int16)).abs().float().mean() > 2.0


def test_colour_drawings_keep_the_pil_path():
    train, _ = transforms()
    transport = ImageTransport.choose("uint8", train)
    img = drawing((300, 240), "RGB")
    torch.manual_seed(1)
    want = GreyAwarePreprocess(train, transport)(img)
    torch.manual_seed(1)
    assert torch.equal(GreyAwarePreprocess(train, transport, "tensor")(img), want)


def test_refused_where_it_cannot_apply():
    train, _ = transforms()
    with pytest.raises(TensorResizeRefused, match="uint8 image transport is not in use"):
        GreyAwarePreprocess(train, ImageTransport.choose("float", train), "tensor")
    jitter, _ = transforms(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.5, gray_scale_prob=0.5)
    coloured = add_augmentations(jitter, hflip=0.5)
    assert any(type(t).__name__ == "color_jitter" for t in coloured.transforms)
    with pytest.raises(TensorResizeRefused, match="other than crops, resizes and flips"):
        GreyAwarePreprocess(coloured, ImageTransport.choose("uint8", coloured), "tensor")
    with pytest.raises(ValueError, match="unknown image resize 'gpu'; one of: pil, tensor"):
        GreyAwarePreprocess(train, None, "gpu")
    args = default_args(train_data="x.tar", image_resize="tensor", image_transport="float")
    assert any(p.startswith("--image-resize tensor: ") and "--image-transport uint8" in p
               for p in validate_train_args(args))
    assert parse_train_args(["--train-data", "x.tar"]).image_resize == "pil"   # off by default
    assert parse_train_args(["--train-data", "x.tar", "--image-resize", "tensor"]).image_resize == "tensor"


def test_the_flag_reaches_the_workers_and_keeps_order(synthetic_shards):
    import open_clip

    tok = open_clip.get_tokenizer("patentclip-tiny")
    _, train, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    table = load_class_table(synthetic_shards["train"])
    out = {}
    for resize in ("pil", "tensor"):
        args = data_args(synthetic_shards["train"], workers=2, sampler="class_aware", image_resize=resize)
        info = DATASETS.get("patent-wds")(args, train, True, epoch=1, tokenizer=tok, class_table=table)
        assert info.dataloader.dataset.preprocess.resize == resize
        out[resize] = list(info.dataloader)
    assert [b["key"] for b in out["pil"]] == [b["key"] for b in out["tensor"]]
    diff = [(p["image"].to(torch.int16) - t["image"].to(torch.int16)).abs().float().mean().item()
            for p, t in zip(out["pil"], out["tensor"])]
    assert max(diff) < 1.0 and any(d > 0 for d in diff)
