"""Captions of a synthetic drawing, from templates that mention the object noun and/or the class name."""

from __future__ import annotations

import numpy as np

from .families import _i
from .render import _VIEW_PHRASES


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


_CAPTION_TEMPLATES: tuple[str, ...] = (
    "A {view} of the ornamental design for {a_noun}, Locarno class {code} {class_name}.",
    "Patent drawing showing the {view} of {a_noun}.",
    "Line drawing of {a_noun} ({class_name}), {view}.",
    "{title}, {view}.",
    "Black and white design patent figure of {a_noun}, {view}.",
    "{View} of {a_noun} from a design patent in class {code} ({class_name}).",
    "Technical line drawing, {view}: {a_noun}.",
    "{A_noun} shown in {view}; industrial design class: {class_name}.",
    "Design patent drawing of {a_noun} in the class {class_name}, {view}.",
)


def make_captions(noun: str, class_code: str, class_name: str, title: str, view: str,
                  rng: np.random.Generator, k: int | None = None) -> list[str]:
    """Build ``k`` (default 3-5) distinct captions for one drawing from the templates.

    Every template mentions the object noun (directly or through the title); about
    half of them also mention the class name.
    """
    view_phrase = _VIEW_PHRASES.get(view, f"{view} view")
    a_noun = f"{_article(noun)} {noun}"
    fields = {
        "view": view_phrase,
        "View": view_phrase[:1].upper() + view_phrase[1:],
        "a_noun": a_noun,
        "A_noun": a_noun[:1].upper() + a_noun[1:],
        "code": class_code,
        "class_name": class_name,
        "title": title,
    }
    if k is None:
        k = _i(rng, 3, 5)
    order = rng.permutation(len(_CAPTION_TEMPLATES))[:k]
    return [_CAPTION_TEMPLATES[i].format(**fields) for i in order]
