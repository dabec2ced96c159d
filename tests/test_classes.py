"""The class table's shared rules: one head/tail split for the shard builder, the losses and the evaluation; one
class-balance weighting for the losses and the sampler; one typed error for an unknown class id."""
import pytest
import torch

from patentclip.plugins.classes import (ClassInfo, ClassTable, UnknownClassError, balance_weights, check_class_ids,
                                        head_class_mask)
from patentclip.plugins.losses import class_balance_weights, class_categories
from patentclip.plugins.samplers import ClassAwareSampler
from patentclip.shards.build import head_tail_categories

# a hand-worked table: 7 classes -> ceil(0.4 * 7) = 3 head classes; ranked by count (ties by id / code):
# 02-01 (40), 03-01 (40), 07-01 (25) | 01-01 (12), 05-01 (7), 04-01 (3), 06-01 (1)
CODES = ["01-01", "02-01", "03-01", "04-01", "05-01", "06-01", "07-01"]
COUNTS = [12, 40, 40, 3, 7, 1, 25]
HEAD = [False, True, True, False, False, False, True]


def table(counts, categories=None):
    cats = categories or [None] * len(counts)
    return ClassTable([ClassInfo(i, CODES[i] if i < len(CODES) else f"{i:02d}-99", f"class {i}", c, cat)
                       for i, (c, cat) in enumerate(zip(counts, cats))])


def test_head_tail_split_is_one_rule():
    # the shard builder (classes.json's "category"), on class codes
    built = head_tail_categories(dict(zip(CODES, COUNTS)))
    assert [built[c] == "head" for c in CODES] == HEAD
    # the class table on its counts: what the evaluation (per-class is_head, i2i_head/*, *_top1_head) uses
    t = table(COUNTS)
    assert t.head_mask().tolist() == HEAD
    assert head_class_mask(COUNTS).tolist() == HEAD
    # the loss plugins' categories for L_cat (0 = head)
    assert class_categories(t).tolist() == [0 if h else 1 for h in HEAD]
    # a table carrying the builder's categories gives the same split, and they win over other counts
    tc = table(COUNTS, [built[c] for c in CODES])
    assert tc.categories() == [built[c] for c in CODES]
    assert tc.head_mask().tolist() == HEAD
    assert tc.head_mask(train_counts=list(reversed(COUNTS))).tolist() == HEAD
    # without categories, training counts given by the caller decide
    assert t.head_mask(train_counts=[1, 1, 1, 1, 50, 60, 0]).tolist() == [True, False, False, False, True, True,
                                                                          False]


def test_head_tail_rounding_ties_and_empty_classes():
    # C = 15: 40% is exactly 6 head classes (no floating-point round-up to 7)
    assert sum(head_class_mask(list(range(15, 0, -1))).tolist()) == 6
    # all equal: the smaller ids win the ties; a class without training samples is never head
    assert head_class_mask([5, 5, 5, 5, 5]).tolist() == [True, True, False, False, False]
    assert head_class_mask([0, 0, 9, 0, 0]).tolist() == [False, False, True, False, False]
    with pytest.raises(ValueError, match=r"3 training counts for 7 classes"):
        table(COUNTS).head_mask(train_counts=[1, 2, 3])
    with pytest.raises(ValueError, match=r"<memory>: some classes have a 'category'"):
        table([1, 2], ["head", None]).head_mask()


def test_balance_weights_are_one_rule():
    # hand-worked: counts 3, 1, beta = 1 -> f = 3/4, 1/4; f^-1 = 4/3, 4; sum_c f_c f_c^-1 = 2 -> w = 2/3, 2
    assert balance_weights(torch.tensor([3.0, 1.0]), 1.0).tolist() == pytest.approx([2 / 3, 2.0], abs=1e-15)
    counts = [90, 0, 20, 7, 1]
    t = table(counts)
    w = t.balance_weights(1.2)
    assert w.dtype == torch.float64 and w[1] == 0
    assert float((t.counts() / t.counts().sum() * w).sum()) == pytest.approx(1.0, abs=1e-12)
    # the sampler's expected multiplicities and the losses' weights are these weights, bit for bit
    assert torch.equal(ClassAwareSampler(t.counts(), 1.2).expected, w)
    lw = class_balance_weights(t.counts(), 1.2)
    assert torch.equal(lw[[0, 2, 3, 4]], w[[0, 2, 3, 4]].float()) and lw[1] == lw.max()
    with pytest.raises(ValueError, match="class_aware sampler: class counts are all zero"):
        ClassAwareSampler(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="negative class counts"):
        balance_weights(torch.tensor([3.0, -1.0]), 1.0)


def test_unknown_class_error_names_the_id_and_the_range():
    t = table([5, 6, 7])
    assert t.check_id(2) == 2
    with pytest.raises(UnknownClassError) as exc:
        t.check_id(7, "sample 'USD1-1' of shards/train-000000.tar")
    e = exc.value
    assert isinstance(e, KeyError) and isinstance(e, ValueError)  # a lookup miss and bad input data
    assert e.class_ids == [7] and e.num_classes == 3
    assert str(e) == ("unknown class id 7 in sample 'USD1-1' of shards/train-000000.tar: <memory> defines 3 classes "
                      "(ids 0..2); were the shards built with another classes.json?")
    with pytest.raises(UnknownClassError, match=r"unknown class id\(s\) \[-1, 5\] in the batch: x\.json defines 3 "
                                                r"classes \(ids 0\.\.2\)") as exc:
        check_class_ids(torch.tensor([0, 5, -1, 5]), 3, "x.json")
    assert exc.value.class_ids == [-1, 5]
    check_class_ids(torch.tensor([0, 1, 2]), 3)  # known ids: nothing raised
