"""patentclip.evaluation.metrics.ranks: top-K by topk and the ranks of relevant items by counting, against full stable sorts
of every row (the rule: score descending, database index ascending), with ties, few and many relevant items, rows
without candidates, float32 and float64, and on a GPU when there is one."""
import pytest
import torch

from patentclip.evaluation.metrics import ranks as K


def sorted_reference(scores, cand, rel):
    """Rows and ranks of the relevant items, and the rule order of the candidates, by sorting whole rows."""
    order = torch.sort(scores.masked_fill(~cand, float("-inf")), dim=1, descending=True, stable=True).indices
    cand_s = cand.gather(1, order)
    rel_s = rel.gather(1, order)
    rank = torch.cumsum(cand_s, 1)
    r, col = rel_s.nonzero(as_tuple=True)
    return r, rank[r, col], order, cand_s


def case(seed, c=9, n=300, ties=False, dtype=torch.float32, rel_frac=0.2, cand_frac=0.7, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many exact ties, also across the top-K cut
        scores = torch.randint(0, 6, (c, n), generator=g).to(dtype) / 5
    else:
        scores = torch.randn(c, n, generator=g, dtype=dtype)
    cand = torch.rand(c, n, generator=g) < cand_frac
    rel = (torch.rand(c, n, generator=g) < rel_frac) & cand
    cand[0] = False                               # a row without candidates
    rel[0] = False
    rel[1] = False                                # a row with candidates but nothing relevant
    rel[2] = cand[2]                              # a row where every candidate is relevant
    rel[3] = False
    rel[3, int(cand[3].nonzero()[0])] = True      # one relevant item
    return scores.to(device), cand.to(device), rel.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("rel_frac", [0.02, 0.3])
def test_relevant_ranks_equal_a_full_sort(dtype, ties, rel_frac):
    for seed in range(3):
        scores, cand, rel = case(seed, ties=ties, dtype=dtype, rel_frac=rel_frac)
        rows, ranks, nrel, ncand = K.relevant_ranks(scores, cand, rel)
        r_ref, rank_ref, _, _ = sorted_reference(scores, cand, rel)
        assert torch.equal(rows, r_ref) and torch.equal(ranks, rank_ref)
        assert torch.equal(nrel, rel.sum(1)) and torch.equal(ncand, cand.sum(1))


def test_relevant_ranks_degenerate_rows():
    # every score equal: one cell, the whole row ranked by index
    scores = torch.full((2, 50), 0.25)
    cand = torch.ones(2, 50, dtype=torch.bool)
    rel = torch.zeros(2, 50, dtype=torch.bool)
    rel[0, [3, 17, 40]] = True
    rel[1, 49] = True
    rows, ranks, _, _ = K.relevant_ranks(scores, cand, rel)
    assert rows.tolist() == [0, 0, 0, 1] and ranks.tolist() == [4, 18, 41, 50]
    # nothing relevant anywhere
    rows, ranks, nrel, ncand = K.relevant_ranks(scores, cand, torch.zeros_like(rel))
    assert rows.numel() == 0 and nrel.tolist() == [0, 0] and ncand.tolist() == [50, 50]
    # a score far from the others (one huge cell span) and relevant items at both ends
    s = torch.cat([torch.tensor([[1e6]]), torch.linspace(-1, 1, 99)[None]], 1)
    r = torch.zeros(1, 100, dtype=torch.bool)
    r[0, [0, 1, 99]] = True
    rows, ranks, _, _ = K.relevant_ranks(s, torch.ones_like(r), r)
    assert ranks.tolist() == [1, 2, 100]


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_equals_a_full_sort(ties):
    for seed in range(4):
        scores, cand, _ = case(seed, c=12, n=200, ties=ties)
        _, _, order, cand_s = sorted_reference(scores, cand, cand)
        for k in (1, 5, 10, 150, 250):
            got = K.top_k(scores, cand, k)
            ref = torch.where(cand_s, order, torch.full_like(order, -1))
            # the reference's first k positions: candidates first (they precede the -inf non-candidates)
            exp = torch.full((scores.shape[0], k), -1, dtype=torch.int64)
            exp[:, :min(k, ref.shape[1])] = ref[:, :k]
            assert torch.equal(got, exp), (seed, k)


def test_top_k_ties_across_the_cut_hand():
    # scores .9 .5 .5 .5 .1: top-2 is [0, 1] (of the three .5s, index 1 first), top-3 [0, 1, 2]
    s = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1], [0.5, 0.5, 0.5, 0.5, 0.5]])
    cand = torch.ones_like(s, dtype=torch.bool)
    assert K.top_k(s, cand, 2).tolist() == [[0, 1], [0, 1]]
    cand[1, :3] = False
    assert K.top_k(s, cand, 3).tolist() == [[0, 1, 2], [3, 4, -1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_equals_cpu():
    for ties in (False, True):
        scores, cand, rel = case(5, c=40, n=5000, ties=ties)
        cpu = K.relevant_ranks(scores, cand, rel)
        gpu = K.relevant_ranks(scores.cuda(), cand.cuda(), rel.cuda())
        for a, b in zip(cpu, gpu):
            assert torch.equal(a, b.cpu())
        assert torch.equal(K.top_k(scores, cand, 10), K.top_k(scores.cuda(), cand.cuda(), 10).cpu())
