"""What every engine takes and returns, and what it counts.

An engine turns a list of :class:`Request` (OpenAI-style chat messages, a seed, sampling settings) into one
:class:`Result` per request, in order. It never raises for one bad request: that request's result has
``finish_reason == "error"`` and an ``error`` text, and the pipeline reports the drawing and leaves its part open
for a rerun. It raises :class:`EngineError` only for what no rerun of the same command fixes (a model folder that
is not a model, an endpoint that refuses the credentials or does not know the model).

**Counts** (:class:`EngineStats`): requests, results by finish reason, prompt and completion tokens, retries,
errors, the cost at the configured prices, and ``generate_seconds``: the time spent inside the model's own
generate call (transformers ``model.generate``, vLLM ``LLM.chat``, or for an HTTP endpoint the time during which
at least one request was in flight). The benchmark and the run summary compare it with the wall time: the rest is
the project's plumbing (loading drawings, prompting, parsing, writing).
"""
from __future__ import annotations

import base64
import io
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


class EngineError(RuntimeError):
    """A configuration error no rerun fixes (bad model folder, credentials refused, unknown model, ...)."""


@dataclass
class Request:
    """One chat completion: ``messages`` (OpenAI chat format; an image part is ``{"type": "image", "image": PIL}``),
    ``seed`` (a pure function of the drawing, stage and attempt), and the sampling settings (``temperature`` 0 is
    greedy)."""

    messages: List[dict]
    seed: int
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.95


@dataclass
class Result:
    """``finish_reason``: ``stop`` (the model ended), ``length`` (cut at ``max_tokens``) or ``error``."""

    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None
    retries: int = 0


@dataclass
class EngineStats:
    requests: int = 0
    finish: Dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    retried_by_status: Dict[str, int] = field(default_factory=dict)
    errors: int = 0
    generate_seconds: float = 0.0
    cost: float = 0.0

    def count(self, results: List[Result], price_in: float = 0.0, price_out: float = 0.0) -> None:
        """Add ``results`` (prices in currency units per million tokens)."""
        for r in results:
            self.requests += 1
            self.finish[r.finish_reason] = self.finish.get(r.finish_reason, 0) + 1
            self.prompt_tokens += r.prompt_tokens
            self.completion_tokens += r.completion_tokens
            self.retries += r.retries
            self.errors += r.finish_reason == "error"
            self.cost += (r.prompt_tokens * price_in + r.completion_tokens * price_out) / 1e6

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["generate_seconds"] = round(self.generate_seconds, 4)
        d["cost"] = round(self.cost, 6)
        return d

    @staticmethod
    def add(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
        """The sum of two :meth:`to_dict` dicts (numbers added, count dicts merged)."""
        out = dict(a)
        for k, v in b.items():
            if isinstance(v, dict):
                m = dict(out.get(k) or {})
                for kk, vv in v.items():
                    m[kk] = m.get(kk, 0) + vv
                out[k] = m
            elif isinstance(v, (int, float)):
                out[k] = round(out.get(k, 0) + v, 6)
        return out


class Engine:
    """Base of the engines (module docstring). Subclasses set ``name``, ``model``, ``vision`` and implement
    :meth:`_generate` (and :meth:`_prepare`, the model-free work that can run ahead in another thread)."""

    name = "engine"

    def __init__(self, model: str, *, price_in: float = 0.0, price_out: float = 0.0):
        self.model = model
        self.vision = False
        self.price_in = price_in
        self.price_out = price_out
        self.stats = EngineStats()
        self._prepare_lock = threading.Lock()

    def prepare(self, requests: List[Request]) -> Any:
        """Whatever the engine can do with ``requests`` before the model runs (tokenising, image preprocessing,
        encoding the request bodies); thread-safe, so that it can run while :meth:`generate` runs."""
        with self._prepare_lock:
            return self._prepare(requests) if requests else None

    def generate(self, requests: List[Request], prepared: Any = None) -> List[Result]:
        """One result per request, in order (module docstring); ``prepared``: :meth:`prepare` of ``requests``."""
        if not requests:
            return []
        results = self._generate(requests, self.prepare(requests) if prepared is None else prepared)
        self.stats.count(results, self.price_in, self.price_out)
        return results

    def _prepare(self, requests: List[Request]) -> Any:
        return None

    def _generate(self, requests: List[Request], prepared: Any) -> List[Result]:
        raise NotImplementedError

    def identity(self) -> Dict[str, Any]:
        """What identifies the model and engine in a run's settings (a changed model must not mix into a run)."""
        return {"engine": self.name, "model": self.model}

    def close(self) -> None:
        """Release the model or connections."""


def image_data_url(image, fmt: str = "PNG") -> str:
    """A PIL image as a ``data:`` URL (PNG by default: drawings are line art, JPEG blurs them)."""
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG", compress_level=1)
    else:
        image.save(buf, format=fmt, quality=95)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(messages: List[dict]) -> List[dict]:
    """Messages in the OpenAI wire format: image parts as ``image_url`` parts with a ``data:`` URL."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": image_data_url(p["image"])}}
                       if p.get("type") == "image" else p for p in content]
        out.append({"role": m["role"], "content": content})
    return out
