"""Figure descriptions of a design grant ("FIG. 1 is a front perspective view of a sport spoon;") parsed into
figure number, view and object name.

Conventions:

* **Figure number**: ``FIG. 3`` -> ``3``, ``FIG. 12A`` -> ``12A``, ``The FIGURE`` (a single-figure patent) ->
  ``1``; Hague-system designs number their reproductions ``1.1``, ``1.2`` (``1.1 : Perspective``, ``1.8 is an
  enlarged partial perspective view``) under a heading ``1. Display screen for automobile`` that names the
  article. ``FIGS. 1-4`` paragraphs and paragraphs without a leading number (the broken-line statements) are not
  figure descriptions.
* **View**: the words before "view" (or, when the sentence has no "view", before "of"/"thereof") mapped to a
  fixed vocabulary, written in a fixed order: directions ``front``, ``rear`` (back), ``left``, ``right``,
  ``top`` (plan, top plan), ``bottom`` (underside, bottom plan), ``side`` (only when neither left nor right is
  given), then kinds ``perspective`` (isometric), ``section`` (sectional, cross-section), ``exploded``,
  ``enlarged`` (detail, close-up, magnified), ``partial`` (fragmentary), ``environment`` (environmental, in
  use, state of use, shown in an environment). ``FIG. 2 is a front, bottom, right-side perspective view`` ->
  ``front right bottom perspective``; ``a front elevational view`` -> ``front``. A description whose words name
  none of these keeps its words as written (``heel side`` -> ``side``, ``reference view`` -> ``reference``,
  ``second image`` -> ``second image``). The sentence as written is kept as the figure's caption.
* **Object**: the article after "of a/an/the" with the boilerplate around it removed ("ornamental design for",
  "an embodiment of", "showing my new design", "according to the present invention", "of FIG. 1"); "thereof"
  and sentences without one take the object of the figure before, and the first figure falls back to the
  claim's article (:func:`claim_object`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = ["FigureDescription", "parse_descriptions", "parse_view", "claim_object", "VIEW_ORDER"]

#: Canonical view words, in the order they are written.
VIEW_ORDER = ("front", "rear", "left", "right", "top", "bottom", "side", "perspective", "section", "exploded",
              "enlarged", "partial", "environment")
_SYNONYMS = {
    "front": "front", "frontal": "front", "rear": "rear", "back": "rear", "left": "left", "right": "right",
    "top": "top", "plan": "plan", "upper": "top", "bottom": "bottom", "underside": "bottom", "lower": "bottom",
    "side": "side", "perspective": "perspective", "isometric": "perspective", "section": "section",
    "sectional": "section", "cross-section": "section", "cross-sectional": "section", "exploded": "exploded",
    "enlarged": "enlarged", "detail": "enlarged", "detailed": "enlarged", "close-up": "enlarged",
    "magnified": "enlarged", "partial": "partial", "fragmentary": "partial", "partially": "partial",
    "environment": "environment", "environmental": "environment",
}
#: Words that say nothing about the view ("a second image thereof", "another embodiment").
_NOT_VIEW_WORDS = frozenset("a an the view views of and is another first second third fourth fifth sixth opposite "
                            "elevational elevation embodiment embodiments image images version configuration state "
                            "design portion".split())
_FIG = re.compile(r"^\s*(?:(?:the\s+)?fig(?:ure)?s?\.?\s*(\d+[A-Za-z]?)(?![\d.]\d)|the\s+figure\b)\s*[:,.]?\s*(.*)$",
                  re.IGNORECASE | re.DOTALL)
_HAGUE = re.compile(r"^\s*(?:fig(?:ure)?\.?\s*)?(\d{1,2}\.\d{1,2})\s*(?:[:\-]|\bis\b|\bshows\b)?\s*(.*)$",
                    re.IGNORECASE | re.DOTALL)
_HAGUE_HEADING = re.compile(r"^\s*(\d{1,2})\.\s+([^\d].*)$")
_VERB = re.compile(r"^(?:is|are|provides|shows|illustrates|depicts|represents|presents|shown)\b\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class FigureDescription:
    figure: str  # "3", "12A", "1.3"
    view: str  # canonical view, "unspecified" when none
    view_text: str  # the view words as written
    object: Optional[str]
    text: str  # the description as written

    def to_dict(self):
        return {"figure": self.figure, "view": self.view, "view_text": self.view_text, "object": self.object,
                "caption": self.text}


def parse_view(phrase: str, sentence: str = "") -> Tuple[str, str]:
    """(canonical view, words as written) of the words before "view" (module docstring)."""
    written = re.sub(r"\s+", " ", phrase.strip(" ,;:.")).lower()
    words = re.findall(r"[a-z]+(?:-[a-z]+)*", written)
    found = set()
    for w in words:
        parts = [w] if w in _SYNONYMS else w.split("-")
        for p in parts:
            if p in _SYNONYMS:
                found.add(_SYNONYMS[p])
    s = sentence.lower()
    if re.search(r"\benvironment(?:al)?\b|\bin use\b|\bstate of use\b", s):
        found.add("environment")
    if re.search(r"\bexploded\b", s):
        found.add("exploded")
    if re.search(r"\benlarged\b|\bdetail(?:ed)? view\b|\bclose-up\b", s):
        found.add("enlarged")
    if re.search(r"\bcross[- ]section(?:al)?\b|\bsectional\b", s):
        found.add("section")
    if "plan" in found:  # "top plan view" and "plan view" are the top, "bottom plan view" the bottom
        found.discard("plan")
        if "bottom" not in found:
            found.add("top")
    if "side" in found and ({"left", "right", "front", "rear"} & found):
        found.discard("side")  # "left side view", "front side view"
    if found:
        return " ".join(v for v in VIEW_ORDER if v in found), written
    rest = [w for w in words if w not in _NOT_VIEW_WORDS]
    if rest:
        return " ".join(rest), written
    if re.search(r"\belevation(?:al)?\b", written):
        return "front", written  # an elevation with no side named is the front one
    return "unspecified", written


_OBJ_PREFIX = re.compile(
    r"^(?:(?:an?|the)\s+)?(?:(?:new|ornamental|claimed|present)\s+)*(?:design\s+(?:for|of)\s+)?"
    r"(?:(?:an?|the)\s+)?(?:(?:first|second|third|fourth|another|one|alternate|alternative)\s+)?"
    r"(?:embodiment\s+(?:of|for)\s+)?(?:(?:an?|the)\s+)?", re.IGNORECASE)
_OBJ_CUT = re.compile(
    r"\s*(?:[,;:(]|\bshowing\b|\bshown\b|\baccording to\b|\bin accordance with\b|\bembodying\b|\bof the present\b|"
    r"\bof fig\b|\bof figs?\.|\bin fig\b|\bthat\b|\bwhich\b|\bwherein\b|\bhaving\b|\bin an?\b|\bin the\b|"
    r"\bwith the\b|\bfrom\b|\bas\b|(?<!portion )\bthereof\b|\bof the design\b|\bviewed\b|\bfor clarity\b|\bembodiment\b|\bin a\b|\.\s|\.$)",
    re.IGNORECASE)


def _clean_object(s: str) -> Optional[str]:
    s = _OBJ_PREFIX.sub("", s.strip())
    m = _OBJ_CUT.search(s)
    if m:
        s = s[:m.start()]
    s = re.sub(r"\s+", " ", s).strip(" .,;:-").strip()
    s = re.sub(r"^(?:(?:design|embodiment)\s+(?:of|for)\s+)(?:(?:an?|the)\s+)?", "", s, flags=re.IGNORECASE)
    s = s.strip("\"'\u201c\u201d\u2018\u2019 ,")
    if not s or len(s) > 120 or s.lower() in ("design", "embodiment", "it", "same", "the same") or \
            re.match(r"^fig", s, re.IGNORECASE):
        return None
    return s


def claim_object(claim: str) -> Optional[str]:
    """The article of a design claim: "The ornamental design for a shaving blade cartridge, as shown and
    described." -> ``shaving blade cartridge``."""
    m = re.search(r"design\s+(?:for|of)\s+(.+?)(?:,?\s+as\s+shown\b|\.\s*$|$)", claim, re.IGNORECASE)
    if not m:
        return None
    obj = _ARTICLE.sub("", m.group(1).strip().strip("\"'\u201c\u201d\u2018\u2019"))
    obj = re.sub(r"\s+", " ", obj).strip(" .,;\"'\u201c\u201d\u2018\u2019")
    return obj or None


def _split_view(rest: str) -> Tuple[str, Optional[str]]:
    """(view words, object clause) of a description after its figure number and verb."""
    rest = _VERB.sub("", rest.strip())
    rest = _ARTICLE.sub("", rest)
    m = re.search(r"\bviews?\b", rest, re.IGNORECASE)
    if m:
        view_words = rest[:m.start()]
        after = rest[m.end():]
        # "top view perspective view": the words up to the last "view" of the leading run
        m2 = re.match(r"^\s*([a-z ,\-]*?)\s*\bviews?\b", after, re.IGNORECASE)
        if m2 and not re.search(r"\bof\b", m2.group(1)):
            view_words += " " + m2.group(1)
            after = after[m2.end():]
        obj = None
        mo = re.match(r"^\s*(?:taken\s+)?(?:of|from)\s+(.*)$", after, re.IGNORECASE | re.DOTALL)
        if mo:
            obj = mo.group(1)
        return view_words, obj
    m = re.search(r"\b(?:of|thereof)\b", rest, re.IGNORECASE)
    if m:
        after = rest[m.end():] if m.group(0).lower() == "of" else ""
        return rest[:m.start()], after or None
    return rest, None


def parse_descriptions(paragraphs: Sequence[str]) -> Tuple[List[FigureDescription], List[str]]:
    """Figure descriptions of a grant's description-of-drawings paragraphs (module docstring); returns them and
    notes on the paragraphs that looked like figure descriptions but could not be read."""
    out: List[FigureDescription] = []
    notes: List[str] = []
    last_object: Optional[str] = None
    heading_object: Optional[str] = None
    seen = set()
    for para in paragraphs:
        text = re.sub(r"\s+", " ", para).strip()
        if not text:
            continue
        fig = None
        rest = ""
        m = _HAGUE_HEADING.match(text)
        if m and not re.search(r"\bview\b|\bis\b", m.group(2), re.IGNORECASE):
            heading_object = m.group(2).strip(" .;:")
            last_object = heading_object
            continue
        m = _FIG.match(text)
        if m and not re.match(r"^\s*figs\b", text, re.IGNORECASE):
            fig = (m.group(1) or "1").upper()
            rest = m.group(2)
        else:
            m = _HAGUE.match(text)
            if m:
                a, b = m.group(1).split(".")
                fig = f"{int(a)}.{int(b)}"
                rest = m.group(2)
        if fig is None:
            continue
        if fig in seen:
            notes.append(f"figure {fig} is described twice; the first description is kept")
            continue
        seen.add(fig)
        view_words, obj_clause = _split_view(rest)
        view, written = parse_view(view_words, rest)
        obj = _clean_object(obj_clause) if obj_clause else None
        if obj is None:
            obj = last_object or heading_object
        else:
            last_object = obj
        out.append(FigureDescription(fig, view, written, obj, text.rstrip(" ;,").removesuffix(" and").rstrip(" ;,")
                                     + ("" if text.rstrip().endswith(".") else ".")))
    return out, notes
