"""The one-channel path for grey drawings gives exactly open_clip's tensors for the RGB-converted image, with the
same random draws; preprocesses it cannot mirror run unchanged."""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from patentclip.plugins.augment import add_augmentations
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess, grey_steps


def drawing(size=(150, 110), mode="L"):
    img = Image.new("L", size, 255)
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(size[0])
    for _ in range(25):
        x0, y0, x1, y1 = rng.integers(0, min(size), 4)
        d.line((x0, y0, x1, y1), fill=int(rng.integers(0, 200)), width=int(rng.integers(1, 4)))
    return img.convert(mode) if mode != "L" else img


def transforms(**aug_cfg):
    import open_clip

    kw = {"aug_cfg": aug_cfg} if aug_cfg else {}
    _, train, val = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, **kw)
    return train, val


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
@pytest.mark.parametrize("which", ["train", "val", "train+patent-augs", "rrc-scale"])
def test_grey_path_is_bit_identical_to_rgb_preprocess(which, mode):
    if which == "rrc-scale":
        pre = transforms(scale=(0.4, 1.0))[0]
    else:
        train, val = transforms()
        pre = val if which == "val" else train
        if which == "train+patent-augs":
            pre = add_augmentations(pre, hflip=0.5, gridmask=0.7,
                                                                    random_erasing=0.7)
    fast = GreyAwarePreprocess(pre)
    assert fast.grey is not None
    for size in ((150, 110), (90, 240), (300, 300)):
        img = drawing(size, mode)
        for seed in range(6):
            torch.manual_seed(seed)
            want = pre(img.convert("RGB"))
            after_want = torch.rand(())  # the RNG has advanced by the same draws
            torch.manual_seed(seed)
            got = fast(img)
            after_got = torch.rand(())
            assert got.shape == want.shape == (3, 224, 224)
            assert torch.equal(got, want), (which, mode, size, seed)
            assert got.is_contiguous() and torch.equal(after_got, after_want)


def test_rgb_images_and_colour_augmentation_take_the_plain_path():
    train, _ = transforms(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, gray_scale_prob=0.2)
    assert grey_steps(train) is None  # colour jitter tells channels apart: no one-channel version
    fast = GreyAwarePreprocess(train)
    img = drawing()
    torch.manual_seed(3), random.seed(3)  # open_clip's colour jitter draws from Python's random
    want = train(img.convert("RGB"))
    torch.manual_seed(3), random.seed(3)
    assert torch.equal(fast(img), want)

    plain_train, _ = transforms()
    rgb = Image.merge("RGB", [drawing(), drawing((150, 110)).rotate(90), drawing()])
    torch.manual_seed(4)
    want = plain_train(rgb)
    torch.manual_seed(4)
    assert torch.equal(GreyAwarePreprocess(plain_train)(rgb), want)
    pal = rgb.convert("P")  # palette images are converted to RGB first, as before
    torch.manual_seed(5)
    want = plain_train(pal.convert("RGB"))
    torch.manual_seed(5)
    assert torch.equal(GreyAwarePreprocess(plain_train)(pal), want)


def test_unknown_step_before_to_tensor_disables_the_grey_path():
    import torchvision.transforms as T

    pre = T.Compose([T.Resize(64), T.GaussianBlur(3), T.ToTensor()])
    assert grey_steps(pre) is None and GreyAwarePreprocess(pre).grey is None
    assert grey_steps(lambda im: im) is None
