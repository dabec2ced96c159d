"""Retrieval and classification metrics for patentclip: pure functions of tensors, no model code.

Used by ``patentclip-eval`` and by the in-training evaluation. Two families of definitions, one module each:

* :mod:`~patentclip.evaluation.metrics.ranking` -- image retrieval (:func:`retrieval_metrics`: mAP, R@K,
  HitRate@K, P@K, MRR@K with the prior-art filter) and image<->text recall (:func:`image_text_recall`);
* :mod:`~patentclip.evaluation.metrics.classification` -- top-k / per-class / balanced accuracy of logits
  (:func:`classification_accuracy`) and zero-shot accuracy (:func:`zero_shot_accuracy`);

and their argument checks (:mod:`~patentclip.evaluation.metrics.inputs`). The head/tail class split these
figures are reported for is the class table's (:meth:`patentclip.plugins.classes.ClassTable.head_mask`).

Conventions shared by all functions
-----------------------------------
* Every function takes torch tensors on any device (CPU or CUDA; the work is done on the device of the first
  feature / logit tensor) and returns a ``dict`` of plain Python numbers, ready for JSON / TensorBoard.
* Features are assumed to be **L2-normalised already**; the similarity of a query ``q`` and a database item
  ``d`` is the dot product ``q @ d`` (i.e. cosine similarity).  Nothing here normalises; half / bfloat16
  inputs are up-cast to float32 before the matrix product.
* Rankings sort by decreasing similarity.  **Ties are broken deterministically by database index**: of two
  items with exactly the same score, the one with the smaller index ranks first (a stable descending sort).
  For classification, of two classes with the same logit the one with the smaller class index ranks first.
* Ranks are 1-based.
"""
from patentclip.evaluation.metrics.classification import classification_accuracy, zero_shot_accuracy
from patentclip.evaluation.metrics.ranking import (BYTES_PER_SCORE, auto_chunk_size, image_text_recall,
                                                   retrieval_metrics)

__all__ = [
    "image_text_recall",
    "retrieval_metrics",
    "auto_chunk_size",
    "BYTES_PER_SCORE",
    "zero_shot_accuracy",
    "classification_accuracy",
]
