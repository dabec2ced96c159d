"""Image-text recall with identical captions: one text, every drawing it describes a positive (docs/evaluation.md).
A hand-worked example, order independence, and the evaluation's text ids from the token sequences."""
import itertools

import torch
import torch.nn.functional as F

from patentclip.evaluation import metrics as M


def example():
    """3 drawings; drawings 0 and 1 have the same caption A, drawing 2 has caption B (2-d features):

        image 0 = (1, 0)    image 1 = (0.6, 0.8)    image 2 = (0, 1)
        text A  = (0.8, 0.6) (drawings 0 and 1)      text B = (0, 1) (drawing 2)

    similarities  image0: A 0.80, B 0.00   image1: A 0.96, B 0.80   image2: A 0.60, B 1.00

    One text per distinct caption: every image's best text is its own caption: image->text R@1 = 3/3. Text A's
    best image is image 1 (0.96), one of the drawings A describes: a hit; text B's best is image 2: a hit;
    text->image R@1 = 2/2. Counted per sample instead, the two copies of A tie for every image: image 1's own copy
    (the second) loses the tie to the first, and text 0 (A, paired with image 0 only) misses too: both R@1 = 2/3,
    and which sample loses depends on the order."""
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    txt = torch.tensor([[0.8, 0.6], [0.8, 0.6], [0.0, 1.0]])
    return img, txt, torch.tensor([7, 7, 3])


def test_hand_worked_example():
    img, txt, ids = example()
    got = M.image_text_recall(img, txt, ks=(1, 2), text_ids=ids)
    assert got == {"image_to_text_R@1": 1.0, "image_to_text_R@2": 1.0, "text_to_image_R@1": 1.0,
                   "text_to_image_R@2": 1.0}
    per_sample = M.image_text_recall(img, txt, ks=(1,))
    assert abs(per_sample["image_to_text_R@1"] - 2 / 3) < 1e-12 and abs(per_sample["text_to_image_R@1"] - 2 / 3) < 1e-12


def test_a_miss_is_still_a_miss():
    """Merging identical texts does not make every image a hit: image 1 = (0.28, 0.96) prefers text B (0.96) to
    its own caption A (0.80): image->text R@1 = 2/3, R@2 = 1. Text A's best images are 0 and 1 (both 0.80), both
    A's; text B's best is image 2 (1.00 vs 0.96): text->image R@1 = 2/2."""
    img = torch.tensor([[1.0, 0.0], [0.28, 0.96], [0.0, 1.0]])
    txt = torch.tensor([[0.8, 0.6], [0.8, 0.6], [0.0, 1.0]])
    got = M.image_text_recall(img, txt, ks=(1, 2), text_ids=torch.tensor([0, 0, 1]))
    assert abs(got["image_to_text_R@1"] - 2 / 3) < 1e-12 and got["image_to_text_R@2"] == 1.0
    assert got["text_to_image_R@1"] == 1.0


def test_the_result_does_not_depend_on_the_order_of_the_samples():
    g = torch.Generator().manual_seed(0)
    n = 12
    img = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
    caption = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5])  # several drawings share a caption
    txt_bank = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = txt_bank[caption]  # identical captions: identical features
    ref = M.image_text_recall(img, txt, ks=(1, 3), text_ids=caption)
    for perm in itertools.islice(itertools.permutations(range(n)), 0, 5000, 997):
        p = torch.tensor(perm)
        assert M.image_text_recall(img[p], txt[p], ks=(1, 3), text_ids=caption[p]) == ref


def test_evaluation_gives_identical_token_sequences_one_id(synthetic_shards):
    """extract_features marks the drawings whose caption tokens are identical with one text id."""
    import open_clip

    from conftest import data_args
    from patentclip.evaluation.features import extract_features
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.registry import DATASETS

    load_builtin_plugins()
    register_model_configs()
    model, _, pre = open_clip.create_model_and_transforms("patentclip-tiny", output_dict=True)
    tok = open_clip.get_tokenizer("patentclip-tiny")
    table = load_class_table(synthetic_shards["train"])
    loader = DATASETS.get("patent-wds")(data_args(val=synthetic_shards["val"], caption_choice="first"), pre, False,
                                        tokenizer=tok, class_table=table).dataloader
    feats = extract_features(model, loader, torch.device("cpu"))
    tokens = torch.cat([b["text"] for b in loader])
    ids = feats["text_id"]
    assert ids.shape[0] == tokens.shape[0]
    for i in range(len(ids)):
        for j in range(len(ids)):
            assert (ids[i] == ids[j]) == bool(torch.equal(tokens[i], tokens[j]))


def test_the_evaluation_counts_identical_captions_once_whatever_the_shard_order():
    """What patentclip-eval computes (evaluation/image_text.py on extract_features' output) does not change when
    the drawings come in another order (another shard order): 40 drawings, 8 captions shared by 5 drawings each,
    each drawing close to its caption. Counted per drawing (no text ids) the same features give figures that do
    change with the order: the check is sensitive to the rule being dropped."""
    from patentclip.evaluation.image_text import image_text_from_features
    from patentclip.evaluation.settings import EvalSettings

    g = torch.Generator().manual_seed(3)
    caption = torch.arange(8).repeat_interleave(5)
    txt_bank = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    img = F.normalize(txt_bank[caption] + 0.6 * torch.randn(40, 16, generator=g), dim=-1)
    feats = {"image_features": img, "text_features": txt_bank[caption], "text_id": caption}
    ref = image_text_from_features(feats, EvalSettings())
    assert 0 < ref["image_to_text_R@1"] < 1
    per_drawing = set()
    for seed in range(6):
        p = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
        shuffled = {k: v[p] for k, v in feats.items()}
        assert image_text_from_features(shuffled, EvalSettings()) == ref
        per_drawing.add(M.image_text_recall(img[p], txt_bank[caption][p], ks=(1,))["image_to_text_R@1"])
    assert len(per_drawing) > 1


def test_against_a_brute_force_reading_of_the_rule():
    """The rule of docs/evaluation.md written out plainly (python loops over distinct captions) on random
    features with shared captions, K = 1, 3, 5."""
    g = torch.Generator().manual_seed(11)
    caption = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6, 6, 7, 8, 9, 9])
    bank = F.normalize(torch.randn(10, 6, generator=g), dim=-1)
    img = F.normalize(bank[caption] + 0.9 * torch.randn(len(caption), 6, generator=g), dim=-1)
    ks = (1, 3, 5)
    got = M.image_text_recall(img, bank[caption], ks=ks, text_ids=caption)
    distinct = sorted(set(caption.tolist()))
    sim = (img @ bank.T).tolist()  # image x distinct caption
    for k in ks:
        hits = 0
        for i, c in enumerate(caption.tolist()):
            order = sorted(distinct, key=lambda t: -sim[i][t])
            hits += c in order[:k]
        assert abs(got[f"image_to_text_R@{k}"] - hits / len(caption)) < 1e-12, k
        hits = 0
        for t in distinct:
            order = sorted(range(len(caption)), key=lambda i: -sim[i][t])
            hits += any(caption[i] == t for i in order[:k])
        assert abs(got[f"text_to_image_R@{k}"] - hits / len(distinct)) < 1e-12, k
