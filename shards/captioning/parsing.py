"""Reading captions out of a model's answer, and dropping the bad ones with a counted reason.

**Parsing** (:func:`split_items`): a JSON list of strings when the answer is one; otherwise one candidate per
non-empty line, with list markers (``1.``, ``1)``, ``(1)``, ``-``, ``*``, ``•``), a ``Caption 3:`` label and
surrounding quotes removed.

**Cleaning** (:func:`clean_generated`): every candidate is first normalised like every caption of the project
(:func:`patentclip.shards.captions.clean_captions`: control characters removed, white space collapsed, NFC), then
dropped for the first reason that applies, in this order:

============== ==================================================================================================
``empty``      nothing left after normalising
``truncated``  the last candidate of an answer that was cut at ``max_tokens`` (finish reason ``length``)
``off_format`` not a caption: a preamble or comment ("Sure, here are ...", a line ending in ``:``, "As an AI
               ..."), Markdown (``**``, ``#``, code fences), or a pattern ``{placeholder}`` left unfilled
``too_short``  fewer than ``min_words`` words
``over_long``  more than ``max_words`` words or ``max_chars`` characters (CLIP reads 77 tokens)
``repetitive`` a degenerate loop: a three-word sequence three times or more, or (from 8 words) fewer than 40 %
               distinct words
``duplicate``  the same words as a caption kept before for this drawing (case, punctuation and spacing ignored)
``surplus``    more than the ``limit`` captions wanted (not a defect; counted so that the totals add up)
============== ==================================================================================================

The captioner's description is cleaned by :func:`clean_description`: normalised, and when it was cut at
``max_tokens`` shortened to its last complete sentence (``description_truncated``); a description that is empty
or repetitive (a three-word sequence five times, or under 30 % distinct words) is not used
(``description_empty``, ``description_repetitive``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from ..captions import clean_captions

REASONS = ("empty", "truncated", "off_format", "too_short", "over_long", "repetitive", "duplicate", "surplus")
DESCRIPTION_REASONS = ("description_empty", "description_truncated", "description_repetitive")

_MARKER = re.compile(r"^\s*(?:(?:\(?\d{1,3}[.):]|[-*\u2022\u2013])\s*)+")
_LABEL = re.compile(r"^\s*caption\s*\d*\s*[:.\-]\s*", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|here (?:are|is)|below (?:are|is)|as an ai|i(?:'m| am) sorry|"
                       r"i cannot|i can't|note:|these captions)\b", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|^#{1,6}\s|```")
_PLACEHOLDER = re.compile(r"[{}]")
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def split_items(text: str) -> List[str]:
    """Candidate captions of an answer (module docstring)."""
    text = (text or "").strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return [i.strip() for i in items]
    out = []
    for line in text.splitlines():
        s = _LABEL.sub("", _MARKER.sub("", line.strip()), count=1).strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1].strip()
        if line.strip():
            out.append(s)
    return out


def words(text: str) -> List[str]:
    return _WORD.findall(text.casefold())


def _norm(text: str) -> str:
    return " ".join(words(text))


def is_repetitive(ws: List[str], repeats: int = 3, distinct: float = 0.4) -> bool:
    """A degenerate loop: a three-word sequence ``repeats`` times or more, or (from 8 words) fewer than
    ``distinct`` of the words different (a description, a paragraph, is allowed 5 and 30 %)."""
    grams = Counter(tuple(ws[i:i + 3]) for i in range(len(ws) - 2))
    if grams and max(grams.values()) >= repeats:
        return True
    return len(ws) >= 8 and len(set(ws)) < distinct * len(ws)


@dataclass
class Cleaned:
    """What :func:`clean_generated` kept, and the count (and a first example) of each reason it dropped for."""

    kept: List[str] = field(default_factory=list)
    dropped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, text: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.examples.setdefault(reason, text[:200])


def clean_generated(text: str, finish_reason: str, *, existing: Iterable[str] = (), limit: Optional[int] = None,
                    min_words: int = 3, max_words: int = 60, max_chars: int = 300) -> Cleaned:
    """Parse an answer and keep its good captions (module docstring). ``existing``: captions already kept for the
    drawing (a repeat of one is a ``duplicate``); ``limit``: how many more are wanted."""
    out = Cleaned()
    seen = {_norm(c) for c in existing}
    items = split_items(text)
    for i, raw in enumerate(items):
        c = clean_captions([raw], 0)[0]
        c = c[0] if c else ""
        ws = words(c)
        if not c or not ws:
            out.drop("empty", raw)
        elif finish_reason == "length" and i == len(items) - 1:
            out.drop("truncated", c)
        elif _PREAMBLE.match(c) or c.endswith(":") or _MARKDOWN.search(c) or _PLACEHOLDER.search(c):
            out.drop("off_format", c)
        elif len(ws) < min_words:
            out.drop("too_short", c)
        elif len(ws) > max_words or (max_chars and len(c) > max_chars):
            out.drop("over_long", c)
        elif is_repetitive(ws):
            out.drop("repetitive", c)
        elif _norm(c) in seen:
            out.drop("duplicate", c)
        elif limit is not None and len(out.kept) >= limit:
            out.drop("surplus", c)
        else:
            seen.add(_norm(c))
            out.kept.append(c)
    return out


def clean_description(text: str, finish_reason: str, max_chars: int = 2000) -> Tuple[Optional[str], Optional[str]]:
    """The captioner's description, cleaned (module docstring): ``(text or None, reason or None)``."""
    c = clean_captions([text or ""], 0)[0]
    c = c[0] if c else ""
    reason = None
    if finish_reason == "length" or (max_chars and len(c) > max_chars):
        c = c[:max_chars] if max_chars else c
        ends = [m.end() for m in _SENTENCE_END.finditer(c)]
        if ends and ends[-1] >= len(c) // 2:
            c = c[:ends[-1]]
        reason = "description_truncated"
    ws = words(c)
    if not ws:
        return None, "description_empty"
    if is_repetitive(ws, repeats=5, distinct=0.3):
        return None, "description_repetitive"
    return c, reason
