"""Engine: Hugging Face transformers on a local model folder (or a hub name, when the hub is reachable), CPU or GPU.

The model is loaded exactly as users load real weights: ``AutoConfig`` decides between a vision-language model
(``AutoModelForImageTextToText`` + ``AutoProcessor``, for the captioner) and a text model
(``AutoModelForCausalLM`` + ``AutoTokenizer``). Requests are batched (``batch_size``, left padding) through the
model's own chat template and ``model.generate``.

**Seeded sampling per request.** ``generate`` draws from one global random stream, so a drawing's caption would
depend on which other drawings share its batch. Instead each row carries its own ``torch.Generator`` seeded with the
request's seed, and sampling is done by the Gumbel-max trick inside a logits processor: the logits are divided by
the temperature, cut to the top-p nucleus, Gumbel noise from the row's generator is added, and ``generate`` takes
the argmax (``do_sample=False``), which is then an exact draw from the tempered, nucleus-filtered distribution.
A drawing therefore gets the same text in any batch, task or rerun (up to the floating-point differences padding
can make on a GPU). Temperature 0 is plain greedy decoding. The model folder's own sampling defaults
(``generation_config.json``) are not used: the run's settings are explicit and recorded.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                          AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from .base import Engine, EngineError, Request, Result


class SeededGumbelSampler(LogitsProcessor):
    """Per-row seeded sampling by the Gumbel-max trick (module docstring)."""

    def __init__(self, seeds: List[int], temperature: float, top_p: float, device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = TopPLogitsWarper(top_p) if 0 < top_p < 1 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20, max=1 - 1e-7)))
        return scores + gumbel


def is_vision_language(config) -> bool:
    """True when ``config`` is of a model type that ``AutoModelForImageTextToText`` loads."""
    return getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device):
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise EngineError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)") from None


class TransformersEngine(Engine):
    """transformers engine (module docstring). ``model_kwargs`` go to ``from_pretrained`` (e.g.
    ``attn_implementation``); ``threads`` > 0 sets torch's CPU threads (on a shared or busy CPU, threads that wait
    for each other make a small model many times slower: one thread per process is then the fastest)."""

    name = "transformers"

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                 threads: int = 0, trust_remote_code: bool = False, model_kwargs: Optional[Dict[str, Any]] = None,
                 **kw):
        super().__init__(model, **kw)
        self.device = resolve_device(device)
        if threads > 0:
            torch.set_num_threads(threads)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = max(1, int(batch_size))
        try:
            config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise EngineError(f"transformers: cannot load a model config from {model!r}: {exc}") from None
        self.vision = is_vision_language(config)
        loader = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        try:
            self.processor = (AutoProcessor if self.vision else AutoTokenizer).from_pretrained(
                model, trust_remote_code=trust_remote_code)
            self.net = loader.from_pretrained(model, dtype=self.dtype, trust_remote_code=trust_remote_code,
                                              **(model_kwargs or {}))
        except (OSError, ValueError) as exc:
            raise EngineError(f"transformers: cannot load {model!r} as {loader.__name__}: {exc}") from None
        self.net.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer if self.vision else self.processor
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.tokenizer, "chat_template", None) is None and getattr(self.processor, "chat_template",
                                                                              None) is None:
            raise EngineError(f"transformers: {model!r} has no chat template (an instruction-tuned model is needed)")
        eos = self.net.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self._config_sha = _config_digest(model)

    def identity(self) -> Dict[str, Any]:
        return {"engine": self.name, "model": self.model, "config_sha256": self._config_sha,
                "dtype": str(self.dtype).replace("torch.", "")}

    def _prepare(self, requests: List[Request]) -> List[Any]:
        """The model inputs of each micro-batch of ``batch_size`` requests (tokenised, images preprocessed)."""
        return [self._encode(requests[i:i + self.batch_size]) for i in range(0, len(requests), self.batch_size)]

    def _generate(self, requests: List[Request], prepared: List[Any]) -> List[Result]:
        out: List[Result] = []
        for k, enc in enumerate(prepared):
            out.extend(self._batch(requests[k * self.batch_size:(k + 1) * self.batch_size], enc))
        return out

    def _encode(self, requests: List[Request]):
        conversations = [r.messages for r in requests]
        if self.vision:
            conversations = [[{**m, "content": [{"type": "text", "text": m["content"]}]}
                              if isinstance(m["content"], str) else m for m in c] for c in conversations]
            return self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True, return_tensors="pt",
                                                      processor_kwargs={"padding": True})
        return self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True, return_tensors="pt", padding=True)

    @torch.inference_mode()
    def _batch(self, requests: List[Request], enc) -> List[Result]:
        enc = enc.to(self.device)
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(self.dtype)
        r0 = requests[0]
        max_new = max(r.max_tokens for r in requests)
        gen = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1,
                               eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id)
        processors = LogitsProcessorList()
        if r0.temperature > 0:
            processors.append(SeededGumbelSampler([r.seed for r in requests], r0.temperature, r0.top_p,
                                                  self.device))
        t = time.perf_counter()
        seqs = self.net.generate(**enc, generation_config=gen, logits_processor=processors)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.generate_seconds += time.perf_counter() - t
        prompt_len = enc["input_ids"].shape[1]
        new = seqs[:, prompt_len:].tolist()
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, req, n_prompt in zip(new, requests, prompt_tokens):
            stop = next((j for j, tok in enumerate(row) if tok in self.eos_ids), None)
            tokens = row[:stop] if stop is not None else row
            tokens = tokens[:req.max_tokens]
            finish = "stop" if stop is not None and stop <= req.max_tokens else "length"
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Result(text, finish, int(n_prompt), len(tokens) + (finish == "stop")))
        return results

    def close(self) -> None:
        self.net = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _config_digest(model: str) -> Optional[str]:
    """SHA-256 (12 hex digits) of a local model folder's config.json; ``None`` for a hub name."""
    p = Path(model) / "config.json"
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    except OSError:
        return None
