"""Image normalisation on the way into the shards.

Every drawing is decoded completely (a truncated or corrupt file fails here, not in training), flattened onto a
white background when it has transparency (a transparent line drawing converted naively turns black), converted
to one colour mode (``L``, 8-bit grey, by default: design-patent drawings are black-and-white line art, and
every reader converts to RGB on load; ``RGB`` keeps colour), optionally shrunk so that its longest side is at
most ``max_side`` pixels (never enlarged; Lanczos), and re-encoded as PNG, JPEG or WebP. The original size is
returned so the builder keeps it in the sample's metadata.

:func:`normalize_image` raises :class:`ImageError` (with a short reason) for anything that cannot be turned into a
drawing: an empty file, bytes that are not an image, a truncated file, an image too large to decode safely.

Memory per build worker is bounded by the decoded source, not by copies of it: a JPEG is decoded at the smallest
DCT scale (1/2, 1/4, 1/8) that is still at least ``REDUCING_GAP`` times the target size (Pillow's ``draft``);
other formats are decoded whole (Pillow has no partial PNG/TIFF decode) and then flattened and box-reduced
``STRIP_ROWS`` rows at a time into the reduced image, which the Lanczos resize finishes. The peak is about the
decoded source, ``width x height x bands`` bytes (RGBA 4, RGB 3, grey or bilevel 1; JPEG divided by the square of
its DCT scale), plus a few strips and the reduced image: 0.6 GB for a 12000 x 12000 RGBA PNG, where flattening the
whole image first took 2.4 GB. The largest source accepted (``MAX_PIXELS``) decodes to at most 1.2 GB. The result is
bit for bit what flattening the whole image and resizing it with ``reducing_gap=REDUCING_GAP`` gives (tested), for
every format but JPEG (which now skips the DCT work it used to throw away).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Tuple

from PIL import Image, ImageFile

#: Storage size rule: a model trained at ``N`` px needs drawings of about ``N * CROP_MARGIN`` px (the random
#: crop, open_clip's ``RandomResizedCrop`` with scale 0.9-1.0, takes 90-100% of the area and is resized to N; the
#: margin keeps a full-resolution crop). More pixels are decoded and resized in every loader worker and never
#: reach the model: at 512 px a worker spends 1.6 ms per drawing, at 256 px 0.8 ms (issue 21).
CROP_MARGIN = 8 / 7
#: The training size the builder stores for by default (ViT-B/L at 224 px): drawings of 256 px.
DEFAULT_TRAIN_IMAGE_SIZE = 224


def storage_side(train_image_size: int) -> int:
    """Longest side to store drawings at for training at ``train_image_size`` px (224 -> 256, 336 -> 384)."""
    if train_image_size <= 0:
        raise ValueError(f"train image size must be > 0 px, got {train_image_size}")
    return int(-(-train_image_size * CROP_MARGIN // 1))


#: Default longest side in pixels: :func:`storage_side` of :data:`DEFAULT_TRAIN_IMAGE_SIZE` (256).
DEFAULT_MAX_SIDE = storage_side(DEFAULT_TRAIN_IMAGE_SIZE)
#: Image formats the builder writes, and the member extension used in the shards.
FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
MODES = ("RGB", "L")
#: Default quality for the lossy formats.
DEFAULT_QUALITY = {"jpg": 92, "webp": 90}
#: Pixel limit (width x height) of a source image; larger ones are refused as ``image_too_large`` (PIL's own
#: decompression-bomb limit is lower and warns instead).
MAX_PIXELS = 300_000_000
#: Sources are box-reduced to at least this many times the target size before the Lanczos resize (Pillow's
#: ``reducing_gap``: the quality of a plain Lanczos resize, a fraction of its cost).
REDUCING_GAP = 3.0
#: Rows flattened and reduced at a time (rounded to a multiple of the reduce factor).
STRIP_ROWS = 256
#: Modes whose flattening depends on the whole image (16/32-bit grey is scaled by its maximum): flattened whole.
_WHOLE_IMAGE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


class ImageError(Exception):
    """A drawing that cannot be used; ``kind`` is the report reason (``empty_image``, ``unreadable_image``,
    ``image_too_large``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageOptions:
    """How drawings are normalised. ``image_format``: png, jpg or webp; ``mode``: L (default) or RGB;
    ``max_side``: longest side in pixels, 0 = keep the size; ``quality``: JPEG/WebP quality 1-100 (None = the
    format's default)."""

    image_format: str = "png"
    mode: str = "L"
    max_side: int = DEFAULT_MAX_SIDE
    quality: int | None = None

    def __post_init__(self):
        if self.image_format not in FORMATS:
            raise ValueError(f"unknown image format {self.image_format!r} (png, jpg or webp)")
        if self.mode not in MODES:
            raise ValueError(f"unknown image mode {self.mode!r} (RGB or L)")
        if self.max_side < 0:
            raise ValueError("max_side must be >= 0 (0 keeps the original size)")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError("quality must be between 1 and 100")

    @property
    def ext(self) -> str:
        """The member extension of the image in the shards (png, jpg or webp)."""
        return FORMATS[self.image_format]

    def to_dict(self) -> dict:
        return {"image_format": self.ext, "mode": self.mode, "max_side": self.max_side,
                "quality": self.effective_quality}

    @property
    def effective_quality(self) -> int | None:
        if self.ext == "png":
            return None
        return self.quality if self.quality is not None else DEFAULT_QUALITY[self.ext]


def _flatten(im: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode``; transparency is composited onto white, 16/32-bit grey is scaled to 8 bits."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0) if im.mode != "F" else (255.0 / hi if hi > 0 else 1.0)
        im = Image.fromarray(np.clip(a * scale, 0, 255).astype("uint8"), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode != mode:
        im = im.convert(mode)
    return im


def target_size(size: Tuple[int, int], max_side: int) -> Tuple[int, int] | None:
    """The written size of a drawing of ``size``: longest side ``max_side`` (never enlarged); None = as it is."""
    if not max_side or max(size) <= max_side:
        return None
    s = max_side / max(size)
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def _reduce_factor(size: Tuple[int, int], target: Tuple[int, int] | None) -> Tuple[int, int]:
    """The box-reduce factor Pillow's ``resize(..., reducing_gap=REDUCING_GAP)`` would use."""
    if target is None:
        return 1, 1
    return (int(size[0] / target[0] / REDUCING_GAP) or 1, int(size[1] / target[1] / REDUCING_GAP) or 1)


def _flatten_reduced(im: Image.Image, mode: str, factor: Tuple[int, int]) -> Image.Image:
    """``_flatten(im, mode).reduce(factor)``, computed ``STRIP_ROWS`` rows at a time (the same pixels, without
    full-size copies of the image)."""
    if im.mode in _WHOLE_IMAGE_MODES:
        out = _flatten(im, mode)
        return out.reduce(factor) if factor != (1, 1) else out
    fx, fy = factor
    w, h = im.size
    out = Image.new(mode, (-(-w // fx), -(-h // fy)))
    step = max(fy, STRIP_ROWS // fy * fy)
    for top in range(0, h, step):
        part = _flatten(im.crop((0, top, w, min(h, top + step))), mode)
        out.paste(part.reduce(factor) if factor != (1, 1) else part, (0, top // fy))
    return out


def decode_drawing(source, mode: str = "L", max_side: int = DEFAULT_MAX_SIDE) -> Tuple[Image.Image, Tuple[int, int]]:
    """Decode ``source`` (a path or bytes) completely and normalise it (module docstring): flattened onto white,
    converted to ``mode``, shrunk to ``max_side`` (0 = keep the size), in bounded memory. Returns
    ``(image, original (w, h))``. Raises :class:`ImageError`. The shard builder encodes the result; the captioner
    shows it to a model.

    ``source`` may also be a PIL image an importer made (a figure cut from a USPTO drawing sheet, already at the
    training size): it is normalised the same way, and its original size is its ``info["orig_size"]``."""
    if isinstance(source, Image.Image):
        w, h = source.size
        if w < 1 or h < 1:
            raise ImageError("unreadable_image", f"image has no pixels ({w}x{h})")
        return _shrink(_flatten(source, mode), max_side), tuple(source.info.get("orig_size", (w, h)))
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ImageError("missing_file", "file not found") from None
        except IsADirectoryError:
            raise ImageError("missing_file", "not a regular file") from None
        except OSError as exc:
            raise ImageError("unreadable_image", f"cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError("empty_image", "empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w < 1 or h < 1:
                raise ImageError("unreadable_image", f"image has no pixels ({w}x{h})")
            if w * h > MAX_PIXELS:
                raise ImageError("image_too_large", f"{w}x{h} pixels exceeds the limit of {MAX_PIXELS:,}")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # multi-page TIFF: the first page is the drawing
            orig = (w, h)
            target = target_size(orig, max_side)
            if target is not None and im.format == "JPEG":  # decode at a DCT scale >= REDUCING_GAP x the target
                im.draft(None, (int(target[0] * REDUCING_GAP), int(target[1] * REDUCING_GAP)))
            im.load()
            factor = _reduce_factor(im.size, target)
            decoded = im.size
            out = _flatten_reduced(im, mode, factor)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("image_too_large", str(exc)) from None
    except Exception as exc:  # UnidentifiedImageError, truncated data, broken chunks, ...
        msg = str(exc) or type(exc).__name__
        raise ImageError("unreadable_image", f"{type(exc).__name__}: {msg}") from None
    if target is not None:  # the Lanczos resize of the reduced image, on the box the whole source maps to
        box = (0.0, 0.0, decoded[0] / factor[0], decoded[1] / factor[1])
        out = out.resize(target, Image.LANCZOS, box=box)
    return out, orig


def _shrink(out: Image.Image, max_side: int) -> Image.Image:
    """An image already in memory shrunk to ``max_side`` by the same rule (:func:`target_size`, Lanczos)."""
    target = target_size(out.size, max_side)
    return out.resize(target, Image.LANCZOS) if target is not None else out


def normalize_image(source, opts: ImageOptions) -> Tuple[bytes, Tuple[int, int], Tuple[int, int]]:
    """Decode ``source`` (a path, bytes or an importer's PIL image), normalise it (:func:`decode_drawing`) and
    encode it.

    Returns ``(encoded bytes, original (w, h), written (w, h))``. Raises :class:`ImageError`.
    """
    out, orig = decode_drawing(source, opts.mode, opts.max_side)
    buf = io.BytesIO()
    if opts.ext == "png":
        out.save(buf, format="PNG", compress_level=6)
    elif opts.ext == "jpg":
        out.save(buf, format="JPEG", quality=opts.effective_quality, subsampling=0 if opts.mode == "RGB" else -1)
    else:
        out.save(buf, format="WEBP", quality=opts.effective_quality, method=4)
    return buf.getvalue(), orig, out.size
