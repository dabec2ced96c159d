"""The caption stage for a batch of drawings: captioner, then language model, then parsing and cleaning.

For each drawing of a batch (the LLM-informed paper's Figure 2a):

1. **Captioner** (optional): the vision-language model sees the drawing (normalised like the shards' drawings,
   longest side ``image_max_side``) and the captioner instruction with the drawing's fields, and describes it. The
   description is cleaned (:func:`~.parsing.clean_description`).
2. **Language model** (optional): the enrichment instruction with the fields, the description and the caption
   patterns asks for ``n`` captions; the answer is parsed and cleaned (:func:`~.parsing.clean_generated`). A drawing
   with fewer than ``min_captions`` distinct captions is asked again with the next attempt's seed, for the
   captions still missing, up to ``max_attempts`` answers in all. Without a language model, the description is the
   drawing's one caption.
3. Each drawing ends as one journal entry (:mod:`.work`): ``ok`` (at least ``min_captions`` captions),
   ``below_min`` (fewer, but at least one: written and reported) or ``failed`` (none: reported, not written; also an
   unreadable drawing). A request that failed in the engine (an endpoint error after all retries) makes no entry:
   the drawing stays open for the next run.

A captions-file line (exactly what ``patentclip-shards build --captions`` joins)::

    {"key": "USD0836880_00", "captions": ["...", ...],
     "provenance": [{"stage": "llm", "engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct",
                     "instruction": "enrich-v1@1c0e42d7", "seed": 1714283051}, ...],
     "description": "...", "description_provenance": {"stage": "captioner", ...}}

one provenance object per caption (the seed is the request's: :func:`~.prompts.request_seed`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..images import ImageError, ImageOptions, decode_drawing
from .engines import Engine, Request, Result
from .instructions import Instruction
from .parsing import clean_description, clean_generated
from .prompts import DrawingTask, captioner_messages, llm_messages, request_seed


@dataclass(frozen=True)
class CaptionSettings:
    """Everything besides the models and instructions that decides what is written (it is part of the plan)."""

    n: int = 20
    min_captions: int = 5
    max_attempts: int = 3
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.95
    captioner_temperature: float = 0.2
    captioner_max_tokens: int = 256
    llm_max_tokens: int = 1024
    min_words: int = 3
    max_words: int = 60
    max_chars: int = 300
    image_max_side: int = 768
    keep_description: bool = False
    system_role: bool = True

    def __post_init__(self):
        if self.n < 1 or not 1 <= self.min_captions <= self.n:
            raise ValueError(f"need 1 <= --min-captions ({self.min_captions}) <= --num-captions ({self.n})")
        if self.max_attempts < 1:
            raise ValueError("--max-attempts must be at least 1")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def load_image(task: DrawingTask, max_side: int):
    """The drawing as an RGB PIL image (longest side ``max_side``), or the :class:`ImageError` that stops it."""
    try:
        src = task.source(ImageOptions(mode="RGB", max_side=max_side)) if task.source else task.image_path
        return decode_drawing(src, "RGB", max_side)[0]
    except ImageError as exc:
        return exc


def _provenance(stage: str, engine: Engine, instruction: Instruction, seed: int) -> Dict[str, Any]:
    return {"stage": stage, "engine": engine.name, "model": engine.model, "instruction": instruction.id,
            "seed": seed}


@dataclass
class Prepared:
    """A batch after :meth:`Captioner.prepare`: the drawings ready for the captioner with their seeds, their requests
    and the engine's encoding of them, and the drawings that could not be read."""

    tasks: List[DrawingTask]
    ready: List[Tuple[DrawingTask, int]] = field(default_factory=list)
    requests: List[Request] = field(default_factory=list)
    encoded: Any = None
    unreadable: Dict[str, ImageError] = field(default_factory=dict)


class Captioner:
    """Runs the stages above over batches (the engines may be the same object when one model does both)."""

    def __init__(self, settings: CaptionSettings, captioner: Optional[Tuple[Engine, Instruction]] = None,
                 llm: Optional[Tuple[Engine, Instruction]] = None):
        if captioner is None and llm is None:
            raise ValueError("nothing to run: neither a captioner nor a language model")
        if captioner is not None and not captioner[0].vision:
            raise ValueError(f"the captioner {captioner[0].model!r} is not a vision-language model "
                             f"({captioner[0].name} engine); give one, or --captioner-engine none")
        self.s = settings
        self.captioner = captioner
        self.llm = llm

    @property
    def needs_images(self) -> bool:
        return self.captioner is not None

    def engines(self) -> List[Engine]:
        out = []
        for pair in (self.captioner, self.llm):
            if pair is not None and all(pair[0] is not e for e in out):
                out.append(pair[0])
        return out

    def prepare(self, tasks: List[DrawingTask]) -> "Prepared":
        """The part of a batch that needs no model output: the drawings decoded, the captioner's requests built and
        encoded by its engine (tokenised, images preprocessed or put in data URLs). The runner calls it for the next
        batch in a background thread while the models generate the current one."""
        s = self.s
        prep = Prepared(tasks)
        if self.captioner is None:
            return prep
        engine, instruction = self.captioner
        for t in tasks:
            im = load_image(t, s.image_max_side)
            if isinstance(im, ImageError):
                prep.unreadable[t.key] = im
                continue
            sd = request_seed(s.seed, t.key, "captioner")
            prep.ready.append((t, sd))
            prep.requests.append(Request(captioner_messages(t, instruction, im, s.system_role), sd,
                                         s.captioner_max_tokens, s.captioner_temperature, s.top_p))
        prep.encoded = engine.prepare(prep.requests)
        return prep

    def caption_batch(self, tasks: Union[List[DrawingTask], "Prepared"]
                      ) -> Tuple[List[Dict[str, Any]], List[Tuple[DrawingTask, str]]]:
        """Journal entries of the drawings that are finished, and ``(task, error)`` of those an engine failed on.
        ``tasks``: a batch, or what :meth:`prepare` made of it."""
        prep = tasks if isinstance(tasks, Prepared) else self.prepare(tasks)
        tasks = prep.tasks
        s = self.s
        entries: Dict[str, Dict[str, Any]] = {}
        errors: List[Tuple[DrawingTask, str]] = []
        counts: Dict[str, Dict[str, Any]] = {t.key: {"dropped": {}, "tokens": {}, "retries": 0, "llm_answers": 0}
                                             for t in tasks}
        live = list(tasks)

        def tally(t: DrawingTask, stage: str, r: Result) -> None:
            c = counts[t.key]
            pt, ct = c["tokens"].get(stage, [0, 0])
            c["tokens"][stage] = [pt + r.prompt_tokens, ct + r.completion_tokens]
            c["retries"] += r.retries

        def fail(t: DrawingTask, kind: str, reason: str) -> None:
            entries[t.key] = {"key": t.key, "status": "failed", "kind": kind, "reason": reason, "n": counts[t.key]}

        # 1. captioner
        descriptions: Dict[str, Tuple[Optional[str], Optional[Dict]]] = {t.key: (None, None) for t in tasks}
        if self.captioner is not None:
            engine, instruction = self.captioner
            for t in tasks:
                if t.key in prep.unreadable:
                    im = prep.unreadable[t.key]
                    fail(t, im.kind, f"drawing {t.path or t.image_path}: {im}")
            results = engine.generate(prep.requests, prep.encoded)
            live = []
            for (t, sd), r in zip(prep.ready, results):
                tally(t, "captioner", r)
                if r.finish_reason == "error":
                    errors.append((t, f"captioner: {r.error}"))
                    continue
                text, reason = clean_description(r.text, r.finish_reason)
                if reason:
                    counts[t.key]["description"] = reason
                descriptions[t.key] = (text, _provenance("captioner", engine, instruction, sd) if text else None)
                live.append(t)

        # 2. language model
        captions: Dict[str, List[str]] = {t.key: [] for t in live}
        provenance: Dict[str, List[Dict]] = {t.key: [] for t in live}
        if self.llm is not None:
            engine, instruction = self.llm
            pending = list(live)
            for attempt in range(s.max_attempts):
                if not pending:
                    break
                seeds = [request_seed(s.seed, t.key, "llm", attempt) for t in pending]
                reqs = [Request(llm_messages(t, instruction, s.n - len(captions[t.key]), descriptions[t.key][0],
                                             s.system_role), sd, s.llm_max_tokens, s.temperature, s.top_p)
                        for t, sd in zip(pending, seeds)]
                results = engine.generate(reqs)
                still = []
                for t, sd, r in zip(pending, seeds, results):
                    tally(t, "llm", r)
                    if r.finish_reason == "error":
                        errors.append((t, f"llm: {r.error}"))
                        captions.pop(t.key)
                        continue
                    counts[t.key]["llm_answers"] += 1
                    got = clean_generated(r.text, r.finish_reason, existing=captions[t.key],
                                          limit=s.n - len(captions[t.key]), min_words=s.min_words,
                                          max_words=s.max_words, max_chars=s.max_chars)
                    dropped = Counter(counts[t.key]["dropped"])
                    dropped.update(got.dropped)
                    counts[t.key]["dropped"] = dict(dropped)
                    captions[t.key].extend(got.kept)
                    provenance[t.key].extend(_provenance("llm", engine, instruction, sd) for _ in got.kept)
                    if len(captions[t.key]) < s.min_captions:
                        still.append(t)
                pending = still

        # 3. entries
        for t in live:
            if t.key not in captions:
                continue  # an engine error: not journaled, the next run generates it
            caps, provs = captions[t.key], provenance[t.key]
            text, dprov = descriptions[t.key]
            if text and (self.llm is None or s.keep_description):  # last: the first caption is the shard's txt
                caps, provs = caps + [text], provs + [dprov]
            c = counts[t.key]
            c["kept"] = len(caps)
            if not caps:
                why = (c.get("description") or "no description") if self.llm is None else \
                    f"no usable caption in {c['llm_answers']} answer(s) (dropped: {c['dropped'] or 'none'})"
                fail(t, "no_caption", why)
                continue
            line: Dict[str, Any] = {"key": t.key, "captions": caps, "provenance": provs}
            if text:
                line["description"], line["description_provenance"] = text, dprov
            entries[t.key] = {"key": t.key, "status": "ok" if len(caps) >= s.min_captions else "below_min",
                              "out": line, "n": c}
        return [entries[t.key] for t in tasks if t.key in entries], errors
