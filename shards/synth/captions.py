"""Captions of a synthetic drawing: templates that describe the design (its shape words, read off the family's drawn
parameters: ``families.Traits``) and mostly name its class too."""

from __future__ import annotations

import numpy as np

from .families import Traits, _i
from .render import _VIEW_PHRASES


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


_CAPTION_TEMPLATES: tuple[str, ...] = (
    "A {view} of {a_desc}, Locarno class {code} {class_name}.",
    "Patent drawing showing the {view} of {a_desc}.",
    "Line drawing of {a_desc} ({class_name}), {view}.",
    "{title}: {a_desc}, {view}.",
    "Black and white design patent figure of {a_desc}, {view}.",
    "{View} of {a_desc}, design class {code} ({class_name}).",
    "Technical line drawing, {view}: {a_desc}.",
    "{A_desc} shown in {view}; industrial design class: {class_name}.",
    "Design patent drawing of {a_desc} in the class {class_name}, {view}.",
)
#: at most this many of a design's features go into one caption (the tiny model reads 40 tokens)
MAX_FEATURES = 2


def describe(noun: str, traits: Traits | None, rng: np.random.Generator) -> str:
    """``"a tall flared cup with an angular handle and a foot ring"``: the design's adjectives and up to
    :data:`MAX_FEATURES` of its features (drawn per caption, in the family's order), as DesignCLIP's generated
    captions describe the shape of a design rather than only naming it."""
    if traits is None:
        return f"{_article(noun)} {noun}"
    words = " ".join([*traits.adjectives, noun])
    features = list(traits.features)
    if len(features) > MAX_FEATURES:
        keep = sorted(rng.choice(len(features), size=MAX_FEATURES, replace=False).tolist())
        features = [features[i] for i in keep]
    text = f"{_article(words)} {words}"
    if features:
        text += " with " + (features[0] if len(features) == 1 else ", ".join(features[:-1]) + " and " + features[-1])
    return text


def make_captions(noun: str, class_code: str, class_name: str, title: str, view: str,
                  rng: np.random.Generator, k: int | None = None, traits: Traits | None = None) -> list[str]:
    """Build ``k`` (default 3-5) distinct captions for one drawing from the templates.

    Every template describes the design: the object noun with the patent's own shape words (``traits``: the
    adjectives and some features of its drawn parameters, so captions differ from patent to patent); about half
    of them also name the class.
    """
    view_phrase = _VIEW_PHRASES.get(view, f"{view} view")
    fields = {
        "view": view_phrase,
        "View": view_phrase[:1].upper() + view_phrase[1:],
        "code": class_code,
        "class_name": class_name,
        "title": title,
    }
    if k is None:
        k = _i(rng, 3, 5)
    order = rng.permutation(len(_CAPTION_TEMPLATES))[:k]
    captions = []
    for i in order:
        a_desc = describe(noun, traits, rng)
        captions.append(_CAPTION_TEMPLATES[i].format(a_desc=a_desc, A_desc=a_desc[:1].upper() + a_desc[1:], **fields))
    return captions
