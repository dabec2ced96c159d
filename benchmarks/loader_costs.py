#!/usr/bin/env python
"""Where a loader worker's time goes, per drawing: decode, ``RandomResizedCrop``'s parameter draw, the crop +
bicubic resize (open_clip's PIL path and the tensor path of ``--image-resize tensor``), tokenizing a caption; at
the storage size the builder uses for a 224-px model (256 px) and at its old default (512 px); and how far the
tensor path's pixels are from the PIL path's.

    python benchmarks/loader_costs.py [--drawings 120 --sizes 256,512 --model ViT-B-32 --repeats 5]
    python benchmarks/loader_costs.py --quick --json out.json     # seconds (the suite's test)

Drawings: real USPTO design-patent drawings (TIFF, ``../shared/realdata``) normalised by the shard builder's own
code (shards/images.py: grey PNG, longest side at most the size) -- realistic bytes and line art; synthetic ones
when the real data is absent. One process, one thread (a loader worker's footing: no start-up, no inter-process
transfer); each step timed over every drawing in ``--repeats`` rounds (after an untimed one) that time every step
and size once in rotated order; the minimum over the rounds is the figure (the least disturbed by other processes
of a shared machine), the median and maximum are printed beside it; ratios use the minimums. The crop uses the
same seeded draws in both paths (the same crop boxes); the pixel difference is the uint8 tensors' (one channel) as
the workers send them: mean and max absolute difference in grey levels and the share of pixels that differ by more
than 1 level. Ratios printed: 512 / 256 px per step and for a whole drawing,
and tensor / PIL for the crop + resize.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import parse_args, row, write_json  # noqa: E402


def drawings(n: int):
    """(source images' bytes, what they are): real TIFFs, else synthetic PNGs."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    try:
        from realdata import realdata_dir
        tifs = sorted(realdata_dir().rglob("*.TIF"))[:n]
    except FileNotFoundError:
        tifs = []
    if tifs:
        return [p.read_bytes() for p in tifs], f"{len(tifs)} real USPTO drawings (TIFF)"
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        im = Image.new("L", (1600, 2200), 255)
        d = ImageDraw.Draw(im)
        for k in range(40):
            d.line([(37 * k + i) % 1600, (53 * k) % 2200, (71 * k + 3 * i) % 1600, (29 * k + i) % 2200], 0, 3)
        b = io.BytesIO()
        im.save(b, "PNG")
        out.append(b.getvalue())
    return out, f"{n} synthetic line drawings (real data absent)"


def timed_rounds(cases, repeats):
    """{name: (min, median, max) ms per item}: ``cases`` {name: (fn, items)} each run once untimed (warm caches,
    lazy imports), then ``repeats`` rounds in which every case is timed once, in an order rotated round by round
    (a slow spell of a shared machine falls on all cases alike). The minimum is the least disturbed estimate."""
    names = list(cases)
    for fn, items in cases.values():
        for x in items:
            fn(x)
    per = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn, items = cases[n]
            t = time.perf_counter()
            for x in items:
                fn(x)
            per[n].append(1000 * (time.perf_counter() - t) / len(items))
    return {n: (min(v), statistics.median(v), max(v)) for n, v in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drawings", type=int, default=120, help="Drawings (default 120).")
    ap.add_argument("--sizes", default="256,512", help="Storage sizes (longest side, px), comma-separated.")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model whose train preprocess is used.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="Write the figures here as JSON (with a \"summary\" list).")
    ap.add_argument("--quick", action="store_true", help="12 drawings, 1 repeat: seconds; checks the script.")
    a = parse_args(ap, argv, dict(drawings=12, repeats=1))

    import open_clip
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from patentclip.plugins.grey_preprocess import GreyAwarePreprocess
    from patentclip.plugins.image_transport import ImageTransport
    from patentclip.shards.images import ImageOptions, normalize_image

    torch.set_num_threads(1)
    _, preprocess, _ = open_clip.create_model_and_transforms(a.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(a.model)
    transport = ImageTransport.choose("uint8", preprocess)
    pil_path = GreyAwarePreprocess(preprocess, transport)
    tensor_path = GreyAwarePreprocess(preprocess, transport, resize="tensor")
    rrc = next(s for s in preprocess.transforms if isinstance(s, T.RandomResizedCrop))
    sources, what = drawings(a.drawings)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    caption = "A perspective view of an ornamental design for a beverage container, showing the lid and handle."

    def seeded(fn):
        def run(img, i=[0]):
            i[0] += 1
            torch.manual_seed(i[0])
            return fn(img)
        return run

    print(f"loader costs: {what}, preprocess of {a.model} ({rrc.size} px crop), 1 thread, {a.repeats} repeats, "
          f"{os.cpu_count()} CPUs")
    res, cases, prepared = {}, {}, {}
    for side in sizes:
        pngs = [normalize_image(src, ImageOptions(max_side=side))[0] for src in sources]
        imgs = [Image.open(io.BytesIO(p)) for p in pngs]
        for im in imgs:
            im.load()
        prepared[side] = (pngs, imgs)
        cases.update({(side, "decode"): (lambda p: Image.open(io.BytesIO(p)).load(), pngs),
                      (side, "rrc_draw"): (lambda im: rrc.get_params(im, rrc.scale, rrc.ratio), imgs),
                      (side, "pil_path"): (seeded(pil_path), imgs),
                      (side, "tensor_path"): (seeded(tensor_path), imgs),
                      (side, "tokenize"): (lambda c: tokenizer([c]), [caption] * len(imgs))})
    times = timed_rounds(cases, a.repeats)
    for side in sizes:
        pngs, imgs = prepared[side]
        r = {"png_kb": statistics.mean(len(p) for p in pngs) / 1024}
        r.update({step: times[(side, step)] for (sd, step) in cases if sd == side})
        diffs, over1, maxd = [], [], 0
        for k, im in enumerate(imgs):
            torch.manual_seed(k)
            x = pil_path(im).to(torch.int16)
            torch.manual_seed(k)
            y = tensor_path(im).to(torch.int16)
            d = (x - y).abs()
            diffs.append(d.float().mean().item())
            over1.append((d > 1).float().mean().item())
            maxd = max(maxd, int(d.max()))
        r["diff_mean"], r["diff_over1"], r["diff_max"] = statistics.mean(diffs), statistics.mean(over1), maxd
        r["whole_pil"] = r["decode"][0] + r["pil_path"][0] + r["tokenize"][0]
        res[side] = r
        print(f"\n{side} px (PNG {r['png_kb']:.1f} KB on average), ms per drawing, min (median, max) over the rounds:")
        for k in ("decode", "rrc_draw", "pil_path", "tensor_path", "tokenize"):
            lo, med, hi = r[k]
            print(f"  {k:12s} {lo:7.3f}  ({med:.3f}, {hi:.3f})")
        print(f"  tensor / PIL crop + resize: {r['tensor_path'][0] / r['pil_path'][0]:.2f}x (minimums), "
              f"{r['tensor_path'][1] / r['pil_path'][1]:.2f}x (medians); pixels: mean |diff| "
              f"{r['diff_mean']:.3f} grey levels, {100 * r['diff_over1']:.2f}% of pixels differ by more than 1, "
              f"max {r['diff_max']}")
    summary = []
    for side, r in res.items():
        summary += [row(f"decode, {side} px", r["decode"][0], "ms"),
                    row(f"RandomResizedCrop parameter draw, {side} px", r["rrc_draw"][0], "ms"),
                    row(f"crop + bicubic resize (PIL), {side} px", r["pil_path"][0], "ms"),
                    row(f"crop + bicubic resize (tensor), {side} px", r["tensor_path"][0], "ms"),
                    row(f"tensor / PIL crop + resize, {side} px", r["tensor_path"][0] / r["pil_path"][0], "x"),
                    row(f"tensor vs PIL pixels: mean |diff|, {side} px", r["diff_mean"], "grey levels")]
    if len(sizes) >= 2:
        lo, hi = res[min(sizes)], res[max(sizes)]
        print(f"\n{max(sizes)} / {min(sizes)} px: decode {hi['decode'][0] / lo['decode'][0]:.2f}x, crop + resize "
              f"{hi['pil_path'][0] / lo['pil_path'][0]:.2f}x, whole drawing (decode + crop/resize + caption) "
              f"{hi['whole_pil'] / lo['whole_pil']:.2f}x")
        summary.append(row(f"whole drawing, {max(sizes)} / {min(sizes)} px", hi["whole_pil"] / lo["whole_pil"], "x"))
    if a.json:
        write_json(a.json, {"summary": summary, "sizes": {str(k): v for k, v in res.items()}, "drawings": what,
                            "model": a.model, "repeats": a.repeats, "quick": a.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
