"""The faiss names and behaviours patentclip's prior-art index relies on: fail loudly if a faiss release moves them."""
import importlib

import numpy as np
import pytest

from patentclip.evaluation import faiss_compat


@pytest.mark.parametrize("module,names", sorted(faiss_compat.REUSED_NAMES.items()))
def test_reused_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, (f"faiss moved {module}.{missing}: patentclip's index uses these names; update "
                         f"patentclip.evaluation.faiss_compat and patentclip.evaluation.index")


def test_behaviours_the_index_relies_on():
    import faiss

    x = np.eye(4, dtype=np.float32)[[0, 1, 1, 2, 3, 0]]  # rows 0 and 5 equal, rows 1 and 2 equal
    flat = faiss.IndexFlatIP(4)
    flat.add(x)
    # the bitmap's bit i (little-endian within a byte) selects row i
    allowed = np.array([0, 0, 1, 1, 1, 1], dtype=bool)
    bitmap = np.packbits(allowed, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    d, i = flat.search(x[[0, 1]], 3, params=faiss.SearchParameters(sel=sel))
    assert set(i[0][d[0] == 1.0]) == {5} and set(i[1][d[1] == 1.0]) == {2}
    assert all(r in np.flatnonzero(allowed) or r == -1 for r in i.ravel())
    # fewer allowed rows than k: the list is padded with -1
    one = np.packbits(np.array([0, 0, 0, 1, 0, 0], dtype=bool), bitorder="little")
    d, i = flat.search(x[:1], 3, params=faiss.SearchParameters(sel=faiss.IDSelectorBitmap(6, faiss.swig_ptr(one))))
    assert i[0].tolist() == [3, -1, -1]
    # the approximate kinds take their own parameter classes with the selector
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(4), 4, 1, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    assert faiss.extract_index_ivf(ivf).nlist == 1
    _, i = ivf.search(x[:1], 2, params=faiss.SearchParametersIVF(sel=sel, nprobe=1))
    assert set(i[0]) <= {2, 3, 4, 5}
    hnsw = faiss.IndexHNSWFlat(4, 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(x)
    _, i = hnsw.search(x[:1], 2, params=faiss.SearchParametersHNSW(sel=sel, efSearch=16))
    assert set(i[0]) <= {2, 3, 4, 5}
    assert hnsw.metric_type == faiss.METRIC_INNER_PRODUCT
