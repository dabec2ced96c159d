"""ArcFace (plugins/arcface.py): the loss against a brute-force per-sample reference and against
pytorch-metric-learning's ArcFaceLoss, the patent-id label space, the plugin in a LossSet, and a two-stage run
(designclip, then ArcFace fine-tuning of the stage-1 image tower) end to end with resume and export."""
import argparse
import json
import math
import os
import subprocess
import sys

import open_clip
import pytest
import torch

from conftest import read_jsonl, run_cli

from patentclip.launch.args import parse_train_args
from patentclip.plugins import arcface as A
from patentclip.plugins.classes import ClassInfo, ClassTable
from patentclip.plugins.losses import LossSet
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.registry import LOSSES

register_model_configs()
load_builtin_plugins()


def brute_force(x, w, y, s, m):
    """The ArcFace loss by its definition, one sample and one class at a time, with arccos (float64)."""
    total = 0.0
    for i in range(x.shape[0]):
        xi = x[i] / math.sqrt(sum(v * v for v in x[i].tolist()))
        logits = []
        for c in range(w.shape[0]):
            wc = w[c] / math.sqrt(sum(v * v for v in w[c].tolist()))
            cos = float(sum(a * b for a, b in zip(xi.tolist(), wc.tolist())))
            if c == int(y[i]):
                theta = math.acos(max(-1.0, min(1.0, cos)))
                cos = math.cos(theta + m) if theta + m <= math.pi else cos - m * math.sin(m)
            logits.append(s * cos)
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        total += lse - logits[int(y[i])]
    return total / x.shape[0]


def inputs(seed=0, b=12, c=7, d=5, obtuse=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    if obtuse:  # a sample pointing away from its centre: theta + m > pi, the fallback branch
        x[0] = -w[y[0]] + 0.01 * torch.randn(d, generator=g, dtype=torch.float64)
    return x, w, y


@pytest.mark.parametrize("s,m", [(64.0, 0.5), (30.0, 0.2), (10.0, 0.0)])
def test_matches_brute_force(s, m):
    x, w, y = inputs()
    ours = torch.nn.functional.cross_entropy(A.arcface_logits(x, w, y, s, m), y)
    assert ours.item() == pytest.approx(brute_force(x, w, y, s, m), rel=1e-10, abs=1e-10)
    cos0 = torch.nn.functional.cosine_similarity(x[0], w[y[0]], dim=0)
    assert math.acos(cos0) + 0.5 > math.pi  # the fallback branch is exercised


def test_matches_pytorch_metric_learning():
    """Same loss and same gradients (embeddings and centres) as pytorch-metric-learning's ArcFaceLoss, whose
    margin is in degrees and whose centres are the columns of W."""
    from pytorch_metric_learning.losses import ArcFaceLoss

    for seed, (s, m) in enumerate([(64.0, 0.5), (30.0, 0.35)]):
        x, w, y = inputs(seed, b=16, c=9, d=6)
        x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
        ours = torch.nn.functional.cross_entropy(A.arcface_logits(x1, w1, y, s, m), y)
        ours.backward()
        ref = ArcFaceLoss(num_classes=9, embedding_size=6, margin=math.degrees(m), scale=s).double()
        ref.W.data = w.t().clone()
        x2 = x.clone().requires_grad_()
        theirs = ref(x2, y)
        theirs.backward()
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-9)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(w1.grad, ref.W.grad.t(), rtol=1e-7, atol=1e-10)


def test_gradient_is_finite_at_the_centre():
    """cos = 1 (an embedding on its centre): arccos has no derivative there; the cos(theta + m) expansion does."""
    w = torch.randn(3, 4, dtype=torch.float64)
    x = w[[1]].clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(A.arcface_logits(x, w, torch.tensor([1]), 64.0, 0.5), torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(x.grad).all()


# -- the label space ---------------------------------------------------------------------------------------------

def train_patents(synthetic_shards):
    ids = set()
    with open(synthetic_shards["manifest"]) as f:
        for line in f:
            pid = json.loads(line)["patent_id"]
            ids.add(pid)
    return ids


def test_patent_table_from_the_shards(synthetic_shards):
    table = A.patent_table_from_shards(synthetic_shards["train"], progress=False)
    val = A.patent_table_from_shards(synthetic_shards["val"], progress=False)
    assert table.kind == "patent" and table.names == sorted(table.names)
    assert set(table.names) | set(val.names) == train_patents(synthetic_shards)
    assert not set(table.names) & set(val.names)  # split by patent
    assert table.lookup([table.names[3], table.names[0]]).tolist() == [3, 0]
    with pytest.raises(ValueError, match="not in the ArcFace label table"):
        table.lookup([val.names[0]])
    assert A.LabelTable.from_json(table.to_json()) == table


def loss_args(**kw):
    base = dict(model="patentclip-tiny", arcface_labels="patent", arcface_scale=64.0, arcface_margin=0.5,
                arcface_label_table=None, train_data=None, rank=0, world_size=1, logs=None, name=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_plugin_in_a_loss_set(tmp_path):
    classes = ClassTable([ClassInfo(i, f"0{i}-01", str(i), 5) for i in range(4)])
    (tmp_path / "ids.json").write_text(json.dumps(["P3", "P1", "P2"]))
    args = loss_args(arcface_label_table=str(tmp_path / "ids.json"))
    s = LossSet("arcface", args, classes)
    assert "arcface" in LOSSES.names() and not s.needs_text
    loss = s.losses["arcface"]
    assert loss.table.names == ["P1", "P2", "P3"] and loss.centres.shape == (3, 64)
    torch.manual_seed(0)
    feats = {"image_features": torch.nn.functional.normalize(torch.randn(4, 64), dim=-1), "text_features": None}
    total, terms = s(feats, {"patent_id": ["P2", "P1", "P2", "P3"]})
    expected = torch.nn.functional.cross_entropy(
        A.arcface_logits(feats["image_features"], loss.centres, torch.tensor([1, 0, 1, 2]), 64.0, 0.5), torch.tensor([1, 0, 1, 2]))
    assert torch.equal(total, expected) and set(terms) == {"arcface"}
    # the table travels in the state dict; another table is refused with the difference
    sd = s.state_dict()
    assert sd["losses.arcface._extra_state"]["table"]["names"] == ["P1", "P2", "P3"]
    (tmp_path / "ids2.json").write_text(json.dumps(["P1", "P2", "P4"]))
    other = LossSet("arcface", loss_args(arcface_label_table=str(tmp_path / "ids2.json")), classes)
    with pytest.raises(ValueError, match=r"only in the checkpoint \['P3'\], only in this run \['P4'\]"):
        other.load_state_dict(sd)
    # class labels
    c = LossSet("arcface", loss_args(arcface_labels="class"), classes).losses["arcface"]
    assert c.table.names == classes.codes and c.labels({"class_id": torch.tensor([3, 0])}, "cpu").tolist() == [3, 0]
    with pytest.raises(ValueError, match="outside"):
        c.labels({"class_id": torch.tensor([4])}, "cpu")
    with pytest.raises(ValueError, match="margin"):
        LossSet("arcface", loss_args(arcface_labels="class", arcface_margin=2.0), classes)


def test_baseline_recipes():
    a = parse_train_args(["--train-data", "x.tar", "--recipe", "effnetb0-arcface"])
    assert (a.model, a.pretrained_image, a.loss, a.lock_text, a.arcface_labels) == (
        "patentclip-efficientnet-b0", True, "arcface", True, "patent")
    b = parse_train_args(["--train-data", "x.tar", "--recipe", "swinv2b-arcface", "--model", "patentclip-tiny-swinv2"])
    assert b.model == "patentclip-tiny-swinv2" and b.pretrained_image
    c = parse_train_args(["--train-data", "x.tar", "--recipe", "arcface", "--arcface-margin", "0.3"])
    assert "model" not in c.recipe_settings and "pretrained_image" not in c.recipe_settings
    assert c.arcface_margin == 0.3 and c.arcface_scale == 64.0


# -- two stages, end to end --------------------------------------------------------------------------------------

PLAIN = """
import sys, torch, open_clip
assert not [m for m in sys.modules if m.startswith("patentclip")]
model, _, _ = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    torch.save(model.eval().encode_image(torch.rand(2, 3, 64, 64, generator=g), normalize=True), sys.argv[2])
"""


@pytest.mark.slow
def test_two_stage_designclip_then_arcface(synthetic_shards, tmp_path):
    """Stage 1: --recipe designclip from scratch. Stage 2: --recipe arcface --pretrained <stage 1>/epoch_1.pt, one
    centre per training patent: the ArcFace loss falls, the text tower is stage 1's bit for bit and out of the
    optimizer, the centres and the label table are in both checkpoints, a resume continues with them, and the
    exported stage-2 model loads in plain open_clip."""
    common = ["--train-data", synthetic_shards["train"], "--model", "patentclip-tiny", "--batch-size", "8",
              "--workers", "0", "--logs", tmp_path, "--seed", "0", "--warmup", "2", "--log-every-n-steps", "100"]
    env = {"OMP_NUM_THREADS": "1"}
    r = run_cli("patentclip.launch.train", *common, "--recipe", "designclip", "--name", "stage1", "--epochs", "1",
                "--train-num-samples", "64", "--lr", "2e-3", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    stage1 = tmp_path / "stage1" / "checkpoints" / "epoch_1.pt"
    stage2 = ["--recipe", "arcface", "--pretrained", stage1, "--name", "stage2", "--lr", "2e-2",
              "--arcface-scale", "30", "--arcface-margin", "0.3", "--aug-gridmask", "0", "--aug-random-erasing", "0"]
    r = run_cli("patentclip.launch.train", *common, *stage2, "--epochs", "2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "stage2"
    steps = read_jsonl(run / "train_steps.jsonl")
    assert set(steps[0]) == {"step", "epoch", "arcface", "loss"}
    n = max(2, len(steps) // 4)
    assert sum(s["arcface"] for s in steps[-n:]) < 0.9 * sum(s["arcface"] for s in steps[:n])
    patents = A.patent_table_from_shards(synthetic_shards["train"], progress=False)
    assert json.loads((run / A.LABELS_FILE).read_text())["names"] == patents.names
    s1 = torch.load(stage1, map_location="cpu", weights_only=False)["state_dict"]
    ck = torch.load(run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=False)
    with torch.device("meta"):
        text = [k for k in open_clip.create_model("patentclip-tiny", device="meta").state_dict()
                if not k.startswith("visual.") and k not in ("logit_scale",)]
    assert all(torch.equal(ck["state_dict"][k], s1[k]) for k in text)
    assert not torch.equal(ck["state_dict"]["visual.proj"], s1["visual.proj"])
    saved = ck["patentclip_losses"]["arcface"]
    assert saved["table"]["names"] == patents.names and saved["centres"].shape == (len(patents), 64)
    assert (saved["scale"], saved["margin"]) == (30.0, 0.3)
    ds = torch.load(run / "checkpoints" / "deepspeed" / "epoch_2" / "mp_rank_00_model_states.pt",
                    map_location="cpu", weights_only=False)
    assert torch.equal(ds["module"]["criterion.losses.arcface.centres"].float(), saved["centres"])
    assert ds["module"]["criterion.losses.arcface._extra_state"]["table"]["names"] == patents.names
    numel = sum(st["exp_avg"].numel() for st in ds["optimizer"]["state"].values())
    visual = sum(v.numel() for k, v in s1.items() if k.startswith("visual."))
    # moments for the image tower and the centres only: no text weight (frozen), no logit scale (unused by ArcFace)
    assert numel == visual + saved["centres"].numel()
    # resume: the centres come back (the loss carries on where it was)
    r = run_cli("patentclip.launch.train", *common, *stage2, "--epochs", "3", "--resume", "latest", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    more = read_jsonl(run / "train_steps.jsonl")[len(steps):]
    assert more and more[0]["step"] == steps[-1]["step"] + 1
    assert sum(s["arcface"] for s in more[:n]) / n < 0.9 * sum(s["arcface"] for s in steps[:n]) / n
    # the exported stage-2 model loads in plain open_clip and embeds like the checkpoint
    from patentclip.evaluation import export as X

    X.export(X.read_checkpoint(str(run / "checkpoints" / "epoch_3.pt")), str(tmp_path / "exported"))
    r = subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path / "exported"), str(tmp_path / "emb.pt")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    model = open_clip.create_model("patentclip-tiny", pretrained=str(run / "checkpoints" / "epoch_3.pt")).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ours = model.encode_image(torch.rand(2, 3, 64, 64, generator=g), normalize=True)
    torch.testing.assert_close(torch.load(tmp_path / "emb.pt"), ours, rtol=1e-5, atol=1e-6)


# -- two processes -----------------------------------------------------------------------------------------------

def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _linear_setup(train_data, rank, world):
    """Features of a small linear "model" and an ArcFace loss whose label table rank 0 lists from the shards."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(12, 64, generator=g).requires_grad_()
    x = torch.randn(8, 12, generator=g)
    torch.manual_seed(3)
    classes = ClassTable([ClassInfo(0, "01-01", "a", 1)])
    loss = LOSSES.build("arcface", loss_args(train_data=train_data, rank=rank, world_size=world,
                                             arcface_scale=30.0, arcface_margin=0.3), classes)
    table = A.patent_table_from_shards(train_data, progress=False)
    pids = [table.names[i] for i in (0, 5, 0, 9, 2, 5, 7, 1)]
    return w, x, loss, pids


def _worker(train_data, rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    w, x, loss, pids = _linear_setup(train_data, rank, world)
    rows = slice(rank * 4, rank * 4 + 4)
    feats = {"image_features": torch.nn.functional.normalize(x[rows] @ w, dim=-1)}
    value = loss(feats, {"patent_id": pids[rows]})["arcface"]
    value.backward()
    grads = [w.grad, loss.centres.grad]
    for gr in grads:  # what DDP / DeepSpeed do: average over the ranks
        dist.all_reduce(gr)
        gr /= world
    v = value.detach().clone()
    dist.all_reduce(v)
    torch.save({"loss": v / world, "w": grads[0], "centres": grads[1], "names": loss.table.names}, out)
    dist.destroy_process_group()


def test_two_ranks_equal_one_process(synthetic_shards, tmp_path):
    """2 gloo processes, each on half of the batch, label table listed by rank 0 and broadcast: the rank-averaged
    loss and gradients (model and centres) equal one process on the whole batch."""
    port = _free_port()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_arcface as t; "
            "t._worker(sys.argv[2], int(sys.argv[3]), 2, int(sys.argv[4]), sys.argv[5])")
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", code, here, synthetic_shards["train"], str(r), str(port),
                               str(tmp_path / f"r{r}.pt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    w, x, loss, pids = _linear_setup(synthetic_shards["train"], 0, 1)
    value = loss({"image_features": torch.nn.functional.normalize(x @ w, dim=-1)}, {"patent_id": pids})["arcface"]
    value.backward()
    for r in range(2):
        got = torch.load(tmp_path / f"r{r}.pt")
        assert got["names"] == loss.table.names
        torch.testing.assert_close(got["loss"], value.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["w"], w.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["centres"], loss.centres.grad, rtol=1e-5, atol=1e-7)
