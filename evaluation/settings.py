"""How an evaluation is run: :class:`EvalSettings` (relevance, prior-art filter, cut-offs, zero-shot templates,
linear-probe protocol, memory of a retrieval chunk, ranking method, seed), recorded with its results; the default templates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

DEFAULT_TEMPLATES = (
    "a patent drawing of {}.",
    "ornamental design for {}.",
    "a line drawing of {}.",
    "{}.",
)


@dataclass
class EvalSettings:
    """How an evaluation is run (recorded with its results)."""

    relevance: str = "class"          # "class": same Locarno class is relevant; "patent": same patent (re-ID);
                                      # "citation": the patents the query's examiner cited (evaluation/citations.py)
    prior_art: str = "auto"           # "on" / "off" / "auto" (= on for class and citation relevance, off for patent)
    ks: Tuple[int, ...] = (5, 10)
    mrr_k: int = 10
    templates: Tuple[str, ...] = DEFAULT_TEMPLATES
    linear_probe: str = "auto"        # "auto": train features if given, else cross-validation; "off"
    probe_folds: int = 2
    max_chunk_bytes: int = 1 << 30    # memory of one retrieval chunk (metrics.retrieval_metrics)
    ranking: str = "count"            # metrics.retrieval_metrics's method: "count", "sort" (reference), "topk"
    seed: int = 0
    extra_metrics: Tuple[str, ...] = ()  # registered extra metrics (evaluation/extra_metrics.py)
    zero_shot: bool = True            # False: no zero-shot metrics (--zeroshot-frequency between its epochs)

    def __post_init__(self):
        if self.relevance not in ("class", "patent", "citation"):
            raise ValueError(f"relevance must be 'class', 'patent' or 'citation', got {self.relevance!r}")
        if self.prior_art not in ("auto", "on", "off"):
            raise ValueError(f"prior_art must be 'auto', 'on' or 'off', got {self.prior_art!r}")
        if self.relevance == "patent" and self.prior_art == "on":
            raise ValueError("the prior-art filter cannot be used with relevance by patent: all drawings of a "
                             "patent share its grant date, so none of them is prior art to another")
        if self.linear_probe not in ("auto", "off"):
            raise ValueError(f"linear_probe must be 'auto' or 'off', got {self.linear_probe!r}")
        if self.ranking not in ("count", "sort", "topk"):
            raise ValueError(f"ranking must be 'count', 'sort' or 'topk', got {self.ranking!r}")
        self.ks = tuple(int(k) for k in self.ks)
        self.templates = tuple(self.templates)
        self.extra_metrics = tuple(self.extra_metrics)

    @property
    def use_prior_art(self) -> bool:
        return self.prior_art == "on" or (self.prior_art == "auto" and self.relevance in ("class", "citation"))
