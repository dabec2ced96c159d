"""The engines that run the captioner and the language model (:mod:`.base` says what every engine does).

``transformers`` (:mod:`.hf`): a local model folder, CPU or GPU. ``vllm`` (:mod:`.vllm`): vLLM offline batched
inference on GPUs. ``http`` (:mod:`.http`): any OpenAI-compatible chat-completions endpoint. Each engine module
is imported when an engine of its kind is made, so a run on an HTTP endpoint needs neither torch models nor vLLM.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

from .base import Engine, EngineError, EngineStats, Request, Result

#: engine name -> (module, class)
ENGINES: Dict[str, tuple] = {
    "transformers": (".hf", "TransformersEngine"),
    "vllm": (".vllm", "VLLMEngine"),
    "http": (".http", "HTTPEngine"),
}

__all__ = ["ENGINES", "Engine", "EngineError", "EngineStats", "Request", "Result", "make_engine"]


def make_engine(kind: str, model: str, **kwargs: Any) -> Engine:
    """An engine of ``kind`` (a name of :data:`ENGINES`) for ``model``; keyword arguments go to its class."""
    if kind not in ENGINES:
        raise EngineError(f"unknown engine {kind!r}; engines: {', '.join(ENGINES)}")
    module, cls = ENGINES[kind]
    return getattr(importlib.import_module(module, __name__), cls)(model, **kwargs)
