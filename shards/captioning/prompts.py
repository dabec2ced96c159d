"""From a manifest record to the model's prompt: the drawing's fields, the chat messages, the request seeds.

**Drawings.** :func:`drawing_tasks` lists every drawing of the input records in input order (records in file
order, drawings in figure order), each with its key ``<patent_id>_<NN>`` (exactly the shard builder's sample key,
so ``patentclip-shards build --captions`` finds it), its image path and its known fields (the shard builder's
template fields, :func:`patentclip.shards.captions.drawing_fields`, plus the grant date; when the record has no
object name, one read from a title such as "Ornamental design for a cup").

**Messages** are OpenAI chat messages. The drawing is one content part ``{"type": "image", "image": <PIL
image>}``; each engine turns it into what its model takes (the PIL image for transformers, a ``data:`` URL for
vLLM and HTTP endpoints).

**Seeds** are a pure function of the run's seed, the drawing's key, the stage and the attempt
(:func:`request_seed`): a drawing gets the same captions whichever task, batch or rerun generates it.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from patentclip.plugins.seeding import stable_int

from ..captions import article, drawing_fields
from ..sample_format import sample_key
from .instructions import Instruction

_TITLE_OBJECT = re.compile(r"^\s*(?:ornamental\s+)?design\s+(?:for|of)\s+(?:an?\s+|the\s+)?(?P<object>.+?)\s*\.?\s*$",
                           re.IGNORECASE)


def object_from_title(title: Optional[str]) -> Optional[str]:
    """The object noun of a design-patent title: "Ornamental design for a cup" -> "cup"; ``None`` otherwise."""
    m = _TITLE_OBJECT.match(title or "")
    return m.group("object") if m else None


@dataclass
class DrawingTask:
    """One drawing to caption: ``index`` is its position in the input (0-based, the order of :func:`drawing_tasks`)."""

    index: int
    key: str
    image_path: Path
    fields: Dict[str, str]
    line: int = 0
    path: str = ""
    extra: Dict[str, object] = field(default_factory=dict)
    #: what to decode when the drawing is not a file of its own (a figure cut from a USPTO sheet): called with
    #: the ImageOptions, it returns the image (the record's ``image_source``)
    source: Optional[Callable] = None


def drawing_tasks(records: Iterable) -> List[DrawingTask]:
    """Every drawing of ``records`` (:class:`~patentclip.shards.manifest.PatentRecord`), in input order."""
    out: List[DrawingTask] = []
    for r in records:
        for d in r.drawings:
            f = drawing_fields(r, d)
            if "object" not in f:
                obj = object_from_title(f.get("title"))
                if obj:
                    f["object"], f["a_object"] = obj, article(obj)
            f["grant_date"] = r.grant_date
            out.append(DrawingTask(len(out), sample_key(r.patent_id, d.index), r.image_path(d), f,
                                   d.extra.get("_line", r.line), d.path, source=functools.partial(r.image_source, d)))
    return out


def request_seed(run_seed: int, key: str, stage: str, attempt: int = 0) -> int:
    """The seed of one request: a pure function of (run seed, drawing key, stage, attempt), in [0, 2**31)."""
    return stable_int(run_seed, key, stage, attempt) & 0x7FFFFFFF


def _chat(system: str, user: str, image, system_role: bool) -> List[dict]:
    """A system message (or, for chat templates without a system role, the system text before the user's) and the
    user message, with the drawing first when there is one."""
    if system and not system_role:
        system, user = "", f"{system}\n\n{user}"
    msgs = [{"role": "system", "content": system}] if system else []
    if image is None:
        msgs.append({"role": "user", "content": user})
    else:
        msgs.append({"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": user}]})
    return msgs


def captioner_messages(task: DrawingTask, instruction: Instruction, image, system_role: bool = True) -> List[dict]:
    """The captioner's chat: the instruction's system message, then the drawing and the user text."""
    system, user = instruction.render(task.fields)
    return _chat(system, user, image, system_role)


def llm_messages(task: DrawingTask, instruction: Instruction, n: int, description: Optional[str],
                 system_role: bool = True) -> List[dict]:
    """The language model's chat: fields, the captioner's description (when there is one) and ``n`` captions asked."""
    values = dict(task.fields, n=n)
    if description:
        values["description"] = description
    system, user = instruction.render(values)
    return _chat(system, user, None, system_role)
