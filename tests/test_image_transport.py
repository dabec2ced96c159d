"""The uint8 image transport: workers stop at the uint8 pixels, the step normalises them on the device, and the
model sees bit for bit the tensors of open_clip's float preprocess."""
import logging

import pytest
import torch
from PIL import Image

from conftest import data_args
from patentclip.evaluation.report import to_uint8
from patentclip.launch.step import move_batch
from patentclip.plugins.augment import add_augmentations
from patentclip.plugins.classes import load_class_table
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess
from patentclip.plugins.data.batch import FIELDS, collate_patent_batch
from patentclip.plugins.image_transport import FLOAT, DeviceNormalize, ImageTransport, split_for_uint8
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.registry import DATASETS
from test_grey_preprocess import drawing, transforms

load_builtin_plugins()
register_model_configs()


def finished(fast, transport, img):
    x = fast(img)
    assert x.dtype == torch.uint8
    return transport.finish(x[None])[0]


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("which", ["train", "val", "train+flip+gridmask", "train+all+two-erasings"])
def test_uint8_transport_is_bit_identical_to_float_preprocess(which, mode):
    import torchvision.transforms as T

    train, val = transforms()
    pre = val if which == "val" else train
    if which == "train+flip+gridmask":
        pre = add_augmentations(pre, hflip=0.5, gridmask=0.9)
    if which == "train+all+two-erasings":  # the patent augmentations plus a second, per-channel erasing
        pre = add_augmentations(pre, hflip=0.5, gridmask=0.5,
                                                                random_erasing=0.8)
        pre = T.Compose(list(pre.transforms) + [T.RandomErasing(p=0.7, value=(0.5, -1.0, 2.0), scale=(0.3, 0.6))])
    uint8 = ImageTransport.choose("uint8", pre)
    float_path, uint8_path = GreyAwarePreprocess(pre), GreyAwarePreprocess(pre, uint8)
    assert uint8.finish is not None and uint8.refused == ""
    erased = set()
    for size in ((150, 110), (90, 240), (300, 300)):
        img = drawing(size).convert(mode) if mode != "L" else drawing(size)
        if mode == "RGB":  # a real colour image, channels differ
            img = Image.merge("RGB", [img.getchannel(0), img.getchannel(1).rotate(90), img.getchannel(2)])
        for seed in range(6):
            torch.manual_seed(seed)
            want = float_path(img)
            after_want = torch.rand(())
            torch.manual_seed(seed)
            pixels = uint8_path(img)
            after_got = torch.rand(())
            assert pixels.dtype == torch.uint8 and pixels.shape[0] == (1 if mode == "L" else 3)
            got = uint8.finish(pixels[None], uint8_path.last_erase()[None])[0]
            assert got.shape == want.shape == (3, 224, 224)
            assert torch.equal(got, want), (which, mode, size, seed)
            assert torch.equal(after_got, after_want)  # the same random draws
            erased.update(tuple(b) for b in uint8_path.last_erase().tolist())
    if which == "train+all+two-erasings":
        assert uint8_path.erasing == 2 and len(erased) > 2  # boxes were drawn, and not always "none"


def test_gridmask_paints_white_on_the_pixels():
    """GridMask fills with 1.0 before Normalize; on the pixels that is 255, and some drawings do get masked."""
    pre = add_augmentations(transforms()[1], gridmask=1.0)
    fast = GreyAwarePreprocess(pre, ImageTransport.choose("uint8", pre))
    img = Image.new("L", (224, 224), 0)  # black: only the mask is white
    torch.manual_seed(0)
    x = fast(img)
    assert x.dtype == torch.uint8 and set(x.unique().tolist()) == {0, 255}


def test_random_valued_erasing_keeps_the_float_transport(synthetic_shards, caplog):
    """Erasing with random values (drawn per pixel) is not deferred: no uint8 split; the pipeline says so and
    sends float batches. Erasing with a fixed value is (the other tests)."""
    import torchvision.transforms as T

    train, _ = transforms()
    pre = T.Compose(list(train.transforms) + [T.RandomErasing(p=0.5, value="random")])
    split, why = split_for_uint8(pre)
    assert split is None and why == "RandomErasing with random values runs after Normalize"
    transport = ImageTransport.choose("uint8", pre)
    fast = GreyAwarePreprocess(pre, transport)
    assert transport.finish is None and transport.kind == "float" and fast(drawing()).dtype == torch.float32
    assert split_for_uint8(lambda im: im)[0] is None
    assert "GaussianBlur" in split_for_uint8(T.Compose(list(train.transforms) + [T.GaussianBlur(3)]))[1]

    import open_clip

    tok = open_clip.get_tokenizer("patentclip-tiny")
    _, tiny, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    tiny = T.Compose(list(tiny.transforms) + [T.RandomErasing(p=0.5, value="random")])
    table = load_class_table(synthetic_shards["train"])
    with caplog.at_level(logging.INFO):
        info = DATASETS.get("patent-wds")(data_args(synthetic_shards["train"]), tiny, True, tokenizer=tok,
                                          class_table=table)
    assert "image transport: float (RandomErasing with random values runs after Normalize)" in caplog.text
    b = next(iter(info.dataloader))
    assert b["image"].dtype == torch.float32 and set(b) <= set(FIELDS) and "image_erase" not in b
    assert info.dataloader.image_transport.kind == "float"


@pytest.mark.parametrize("workers", [0, 2])
def test_pipeline_batches_match_across_transports(synthetic_shards, workers):
    """The same run with --image-transport uint8 and float: identical keys, and after the step's move_batch
    identical image and image2 tensors (flip, GridMask, multi-view pairs, class-aware sampling); evaluation
    batches too."""
    import open_clip

    tok = open_clip.get_tokenizer("patentclip-tiny")
    _, train, val = open_clip.create_model_and_transforms("patentclip-tiny")
    train = add_augmentations(train, hflip=0.5, gridmask=0.5,
                                                                random_erasing=0.5)
    table = load_class_table(synthetic_shards["train"])
    for is_train, pre, shards in ((True, train, synthetic_shards["train"]), (False, val, synthetic_shards["val"])):
        out, transports = {}, {}
        for transport in ("uint8", "float"):
            kw = dict(train=shards) if is_train else dict(val=shards)
            args = data_args(**kw, workers=workers, multiview=True, sampler="class_aware", image_transport=transport)
            info = DATASETS.get("patent-wds")(args, pre, is_train, tokenizer=tok, class_table=table)
            out[transport] = list(info.dataloader)
            transports[transport] = info.dataloader.image_transport
            assert transports[transport].kind == transport
        assert len(out["uint8"]) == len(out["float"]) > 1
        for u, f in zip(out["uint8"], out["float"]):
            assert u["key"] == f["key"]
            assert u["image"].dtype == torch.uint8 and u["image"].shape[1] == 1  # grey drawings, one channel
            assert f["image"].dtype == torch.float32 and set(u) <= set(FIELDS) and set(f) <= set(FIELDS)
            if is_train:  # the erase boxes travel with the pixels, one per drawing and erasing step
                assert u["image_erase"].shape == u["image2_erase"].shape == (len(u["key"]), 1, 4)
            mu = move_batch(u, "cpu", torch.float32, transports["uint8"])
            mf = move_batch(f, "cpu", torch.float32, transports["float"])
            for name in ("image", "image2") if is_train else ("image",):
                assert mu[name].dtype == torch.float32 and torch.equal(mu[name], mf[name]), name
            assert torch.equal(mu["text"], mf["text"])
            assert u["image"].numel() * u["image"].element_size() * 12 == f["image"].numel() * 4


def test_batches_mixing_grey_and_colour_drawings_collate_to_three_channels():
    grey = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    colour = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    b = collate_patent_batch([{"image": grey, "key": "a"}, {"image": colour, "key": "b"}])
    assert b["image"].shape == (2, 3, 8, 8)
    assert torch.equal(b["image"][0], grey.expand(3, -1, -1)) and torch.equal(b["image"][1], colour)
    with pytest.raises(RuntimeError):  # another size is still an error
        collate_patent_batch([{"image": grey}, {"image": torch.zeros(3, 9, 8, dtype=torch.uint8)}])


def test_deferred_erasing_paints_its_boxes_and_checks_them():
    norm = DeviceNormalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), erase_values=[(7.0,)])
    x = torch.full((2, 1, 5, 6), 255, dtype=torch.uint8)
    boxes = torch.tensor([[[1, 2, 2, 3]], [[-1, -1, -1, -1]]], dtype=torch.int32)
    y = norm(x, boxes)
    want = torch.ones(2, 3, 5, 6)
    want[0, :, 1:3, 2:5] = 7.0  # F.erase(img, i=1, j=2, h=2, w=3, v=7)
    assert torch.equal(y, want)
    with pytest.raises(ValueError, match="erases 1 time"):
        norm(x)


def test_finish_needs_the_finisher_and_keeps_float_batches():
    import torchvision.transforms as T

    b = {"image": torch.zeros(2, 1, 4, 4, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="uint8 image batch, but this image transport is float: pass the loader"):
        FLOAT.images(b, "image", "cpu", torch.float32)
    with pytest.raises(ValueError, match="image transport is float"):
        move_batch(b, "cpu", torch.float32)  # the step without the loader's transport
    transport = ImageTransport.choose("uint8", T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]))
    norm = transport.finish
    x = transport.images(b, "image", "cpu", torch.bfloat16)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.bfloat16 and torch.all(x == -2)
    f = torch.randn(2, 3, 4, 4)
    assert norm(f) is f  # a float batch is already normalised
    assert FLOAT.images({"image": f}, "image", "cpu", torch.float32) is f
    with pytest.raises(ValueError, match="float32 image batch, but this image transport is uint8"):
        transport.images({"image": f}, "image", "cpu", torch.float32)
    with pytest.raises(ValueError, match="uint8 image batch"):
        norm(torch.zeros(2, 2, 4, 4, dtype=torch.uint8))


def test_report_shows_uint8_pixels_as_they_are():
    px = torch.randint(0, 256, (1, 5, 6), dtype=torch.uint8)
    out = to_uint8(px, torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    assert out.shape == (5, 6, 3) and (out[..., 2] == px[0].numpy()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_finish_on_cuda_matches_the_cpu_float_preprocess():
    train, _ = transforms()
    pre = add_augmentations(train, hflip=0.5, gridmask=0.9,
                                                              random_erasing=0.7)
    uint8 = ImageTransport.choose("uint8", pre)
    float_path, uint8_path = GreyAwarePreprocess(pre), GreyAwarePreprocess(pre, uint8)
    want, pixels, boxes = [], [], []
    for seed in range(8):
        torch.manual_seed(seed)
        want.append(float_path(drawing((150 + seed, 110))))
        torch.manual_seed(seed)
        pixels.append(uint8_path(drawing((150 + seed, 110))))
        boxes.append(uint8_path.last_erase())
    b = {"image": torch.stack(pixels), "image_erase": torch.stack(boxes)}
    got = uint8.images(b, "image", "cuda", torch.float32)
    assert got.device.type == "cuda" and torch.equal(got.cpu(), torch.stack(want))
