"""Engine: vLLM offline batched inference on GPUs (``vllm.LLM(...).chat``), the engine clusters run for this.

One ``LLM`` per model and process (one GPU per SLURM task, or ``tensor_parallel_size`` GPUs for a model that
needs several). A batch of requests is one ``LLM.chat`` call: vLLM schedules it with continuous batching and
paged attention, so large batches (hundreds of drawings) keep the GPU full. Each request has its own
``SamplingParams(seed=...)``, so a drawing's text does not depend on its batch (vLLM's per-request generators).
Drawings go in as OpenAI ``image_url`` parts with a ``data:`` URL, the format ``LLM.chat`` documents for
multi-modal input; ``limit_mm_per_prompt={"image": 1}`` is set for vision-language models.

The vLLM names used here are declared in :mod:`patentclip.shards.captioning.compat` (``VLLM_SURFACE``) and
checked by ``tests/test_caption_engines.py`` on a machine with vLLM and a GPU. ``vllm`` is imported when the
engine is made, not with this module: it is a GPU-cluster dependency installed in its own environment (it pins
its own torch), not one of patentclip's.
"""
from __future__ import annotations

import importlib
import time
from typing import Any, Dict, List, Optional

from transformers import AutoConfig

from .base import Engine, EngineError, Request, Result, openai_messages
from .hf import is_vision_language


#: ``vllm.LLM`` arguments that change what the model writes (part of the run's settings).
OUTPUT_ARGS = ("dtype", "seed", "quantization", "revision", "tokenizer", "max_model_len", "hf_overrides")


def import_vllm():
    """The ``vllm`` module, or :class:`EngineError` saying how to get it."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise EngineError(f"the vllm engine needs vLLM ({exc}); install it on the GPU nodes following vLLM's "
                          "instructions (pip install vllm, in an environment with the torch it pins), or use the "
                          "transformers engine, or an HTTP endpoint (--engine http, e.g. a vllm serve)") from None


class VLLMEngine(Engine):
    """vLLM engine (module docstring). ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``)."""

    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "auto", seed: int = 0, vision: Optional[bool] = None,
                 trust_remote_code: bool = False, engine_kwargs: Optional[Dict[str, Any]] = None, **kw):
        super().__init__(model, **kw)
        vllm = import_vllm()
        self._vllm = vllm
        args: Dict[str, Any] = {"model": model, "dtype": dtype, "seed": seed, "trust_remote_code": trust_remote_code}
        if vision is None:
            vision = is_vision_language(AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code))
        self.vision = bool(vision)
        if self.vision:
            args["limit_mm_per_prompt"] = {"image": 1}
        args.update(engine_kwargs or {})
        self.llm = vllm.LLM(**args)
        self._args = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, dict))}

    def identity(self) -> Dict[str, Any]:
        """Model, vLLM version and the arguments that change the numbers (not memory or parallelism settings:
        a rerun with another ``gpu_memory_utilization`` continues the same run)."""
        return {"engine": self.name, "model": self.model, "vllm": getattr(self._vllm, "__version__", "?"),
                **{k: self._args[k] for k in OUTPUT_ARGS if k in self._args}}

    def _prepare(self, requests: List[Request]):
        """The conversations in OpenAI form (drawings as data URLs) and one ``SamplingParams`` per request."""
        params = [self._vllm.SamplingParams(n=1, temperature=r.temperature, top_p=r.top_p if r.temperature > 0 else 1.0,
                                            max_tokens=r.max_tokens, seed=r.seed) for r in requests]
        return [openai_messages(r.messages) for r in requests], params

    def _generate(self, requests: List[Request], prepared) -> List[Result]:
        conversations, params = prepared
        t = time.perf_counter()
        try:
            outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        except (ValueError, RuntimeError) as exc:  # e.g. a prompt longer than max_model_len fails the whole call
            self.stats.generate_seconds += time.perf_counter() - t
            if len(requests) == 1:
                return [Result(finish_reason="error", error=f"vllm: {type(exc).__name__}: {exc}")]
            return [r for k, req in enumerate(requests)
                    for r in self._generate([req], ([conversations[k]], [params[k]]))]
        self.stats.generate_seconds += time.perf_counter() - t
        results = []
        for o in outputs:
            c = o.outputs[0]
            finish = "length" if c.finish_reason == "length" else "stop"
            results.append(Result(c.text, finish, len(o.prompt_token_ids or []), len(c.token_ids or [])))
        return results

    def close(self) -> None:
        self.llm = None
