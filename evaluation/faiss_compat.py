"""The faiss surface patentclip uses, and nothing else.

patentclip's prior-art index (:mod:`patentclip.evaluation.index`) stores its vectors in faiss: an exact
inner-product index (``IndexFlatIP``) by default, an inverted-file (``IndexIVFFlat``) or graph (``IndexHNSWFlat``)
index as the approximate options, searched with a bitmap of the drawings the filters allow
(``IDSelectorBitmap`` in ``SearchParameters*``). ``tests/test_faiss_compat.py`` fails loudly when a faiss release
moves one of the names below or changes a behaviour the index relies on (the bit order of the bitmap, the
``params=`` keyword of ``search``, the ``-1`` padding of short result lists).
"""
from __future__ import annotations

import faiss

# module -> names patentclip calls or instantiates
REUSED_NAMES = {
    "faiss": ["IndexFlatIP", "IndexIVFFlat", "IndexHNSWFlat", "METRIC_INNER_PRODUCT", "IDSelectorBitmap",
              "SearchParameters", "SearchParametersIVF", "SearchParametersHNSW", "read_index", "write_index",
              "swig_ptr", "omp_set_num_threads", "omp_get_max_threads", "extract_index_ivf", "downcast_index"],
}

#: the faiss version the index format was written against (informative; recorded in every index.json)
VERSION = faiss.__version__
