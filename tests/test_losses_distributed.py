"""2-process gloo runs (real torch.distributed, no mocks) against one process on the concatenated batch.

Part A, every loss alone and all of them under learned uncertainty weighting, on a small linear "model"
(features = normalize(x W)) with the loss parameters (classification head, s_k) and logit_scale:

* ``--gather-with-grad`` (with and without ``--local-loss``): the loss averaged over the ranks and the
  gradients averaged over the ranks (what DDP / DeepSpeed apply) equal the single process's.
* open_clip's default (no ``--gather-with-grad``, no ``--local-loss``): every rank computes the global loss;
  the encoder gradient is 1/world_size of the single process's, exactly as with open_clip's ClipLoss.

Part B, the DeepSpeed engine with open_clip's feature-cache accumulation (``train_step_accum``): 2 ranks x
``--accum-freq`` 2 x micro-batch 2 (ZeRO 0, 1 and 2) and 2 ranks x batch 4 take the same SGD step as one process
on the 8 samples (a plain torch step, no DeepSpeed), for the tiny open_clip model with every loss; so do
1 rank x ZeRO 0 with and without accumulation (where launch.step switches DeepSpeed's 1-rank all-reduce off).

The workers are this file run as a script (``python tests/test_losses_distributed.py --worker ...``).
"""
import argparse
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from patentclip.launch.args import default_args
HERE = os.path.abspath(__file__)
ALL_LOSSES = ["clip", "class_aware_contrastive", "multiview_contrastive", "class_aware_classification",
              "class_contrastive", "category_contrastive"]
COUNTS = [20, 9, 5, 3, 2, 1, 1]  # 7 classes: 3 head, 4 tail
N, WORLD, D_IN, D = 8, 2, 12, 16
MODES = {"gwg": dict(gather_with_grad=True, local_loss=False),
         "gwg_local": dict(gather_with_grad=True, local_loss=True),
         "default": dict(gather_with_grad=False, local_loss=False)}
SPECS = {name: (name, "fixed") for name in ALL_LOSSES}
SPECS["all_uncertainty"] = ("clip,class_aware_contrastive=0.1,multiview_contrastive=0.2,class_aware_classification,"
                            "class_contrastive,category_contrastive", "uncertainty")
SGD_LR = 0.5
ENGINE_RUNS = {"zero0_accum2": dict(zero_stage=0, accum=2, local_loss=False),
               "zero1_accum2": dict(zero_stage=1, accum=2, local_loss=False),
               "zero2_accum2_local": dict(zero_stage=2, accum=2, local_loss=True),
               "zero1_accum1": dict(zero_stage=1, accum=1, local_loss=False)}


def table():
    from patentclip.plugins.classes import ClassInfo, ClassTable

    return ClassTable([ClassInfo(i, f"{i:02d}-01", f"class {i}", c) for i, c in enumerate(COUNTS)])


def loss_args(rank, world, **kw):
    base = dict(world_size=world, rank=rank, local_loss=False, gather_with_grad=False, loss_beta=1.2,
                embed_dim=D, head_num_heads=2, head_text_dropout=0.0, multiview_single="drop")
    base.update(kw)
    return default_args(**base)


def full_data():
    g = torch.Generator().manual_seed(123)
    return {"x_img": torch.randn(N, D_IN, generator=g), "x_txt": torch.randn(N, D_IN, generator=g),
            "x_img2": torch.randn(N, D_IN, generator=g),
            "class_id": torch.tensor([0, 1, 0, 2, 6, 0, 1, 3]),
            "has_view2": torch.tensor([1, 1, 0, 1, 1, 0, 1, 1])}


def linear_model(spec, weighting, rank, world, mode):
    from patentclip.plugins.losses import LossSet

    g = torch.Generator().manual_seed(7)
    params = {"w_img": torch.randn(D_IN, D, generator=g), "w_txt": torch.randn(D_IN, D, generator=g),
              "logit_scale": torch.tensor([2.0])}
    params = {k: v.requires_grad_() for k, v in params.items()}
    torch.manual_seed(11)
    crit = LossSet(spec, loss_args(rank, world, loss_weighting=weighting, **MODES[mode]), table())
    if crit.log_vars is not None:
        with torch.no_grad():
            for i, p in enumerate(crit.log_vars.values()):
                p.fill_(0.3 - 0.2 * i)
    return params, crit


def linear_step(spec, weighting, rank, world, mode):
    """Loss terms, total and gradients of one forward/backward on this rank's shard of the data."""
    data = full_data()
    per = N // world
    sl = slice(rank * per, (rank + 1) * per)
    params, crit = linear_model(spec, weighting, rank, world, mode)
    feats = {"image_features": F.normalize(data["x_img"][sl] @ params["w_img"], dim=-1),
             "text_features": F.normalize(data["x_txt"][sl] @ params["w_txt"], dim=-1),
             "image2_features": F.normalize(data["x_img2"][sl] @ params["w_img"], dim=-1),
             "logit_scale": params["logit_scale"].exp()}
    total, terms = crit(feats, {"class_id": data["class_id"][sl], "has_view2": data["has_view2"][sl]})
    total.backward()
    grads = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in params.items()}
    grads.update({"criterion." + k: p.grad.clone() for k, p in crit.named_parameters() if p.grad is not None})
    return {"total": total.detach(), "terms": {k: v.detach().clone() for k, v in terms.items()}, "grads": grads}


SIGLIP_IMPLS = ("bidir", "shift", "reduce", "gather")


def siglip_step(rank, world, impl):
    """The siglip plugin (open_clip's SigLipLoss) on this rank's shard of the linear model's features, with a
    learned logit bias: loss and gradients (``--loss-dist-impl impl``)."""
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.registry import LOSSES

    load_builtin_plugins()
    data = full_data()
    per = N // world
    sl = slice(rank * per, (rank + 1) * per)
    g = torch.Generator().manual_seed(9)
    params = {"w_img": torch.randn(D_IN, D, generator=g), "w_txt": torch.randn(D_IN, D, generator=g),
              "logit_scale": torch.tensor([2.3]), "logit_bias": torch.tensor([-1.5])}
    params = {k: v.requires_grad_() for k, v in params.items()}
    loss = LOSSES.build("siglip", loss_args(rank, world, loss_dist_impl=impl), table())
    feats = {"image_features": F.normalize(data["x_img"][sl] @ params["w_img"], dim=-1),
             "text_features": F.normalize(data["x_txt"][sl] @ params["w_txt"], dim=-1),
             "logit_scale": params["logit_scale"].exp(), "logit_bias": params["logit_bias"]}
    total = loss(feats, {})["siglip"]
    total.backward()
    return {"total": total.detach(), "grads": {k: p.grad.clone() for k, p in params.items()}}


def siglip_reference():
    """-1/N sum_ij log sigmoid(z_ij (s v_i . t_j + b)) over the whole batch, written out, and its gradients."""
    data = full_data()
    g = torch.Generator().manual_seed(9)
    params = {"w_img": torch.randn(D_IN, D, generator=g), "w_txt": torch.randn(D_IN, D, generator=g),
              "logit_scale": torch.tensor([2.3]), "logit_bias": torch.tensor([-1.5])}
    params = {k: v.requires_grad_() for k, v in params.items()}
    v = F.normalize(data["x_img"] @ params["w_img"], dim=-1)
    t = F.normalize(data["x_txt"] @ params["w_txt"], dim=-1)
    total = 0.0
    for i in range(N):
        for j in range(N):
            z = 1.0 if i == j else -1.0
            total = total - F.logsigmoid(z * (params["logit_scale"].exp() * (v[i] * t[j]).sum()
                                              + params["logit_bias"]))
    total = (total / N).reshape(())
    total.backward()
    return {"total": total.detach(), "grads": {k: p.grad.clone() for k, p in params.items()}}


# -- part B helpers (DeepSpeed engine) ------------------------------------------------------------------------

def engine_spec():
    return SPECS["all_uncertainty"][0]


def tiny_module(rank, world, local_loss):
    import open_clip

    from patentclip.launch.model import PatentTrainModule, make_logit_scale_nonscalar
    from patentclip.plugins.losses import LossSet
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    clip = open_clip.create_model("patentclip-tiny", output_dict=True)
    make_logit_scale_nonscalar(clip)
    torch.manual_seed(1)
    a = loss_args(rank, world, gather_with_grad=True, local_loss=local_loss, loss_weighting="uncertainty",
                  model="patentclip-tiny", embed_dim=None)
    return PatentTrainModule(clip, LossSet(engine_spec(), a, table()))


def image_batch():
    g = torch.Generator().manual_seed(5)
    data = full_data()
    return {"image": torch.randn(N, 3, 64, 64, generator=g), "image2": torch.randn(N, 3, 64, 64, generator=g),
            "text": torch.randint(1, 400, (N, 40), generator=g), "class_id": data["class_id"],
            "has_view2": data["has_view2"], "key": [f"k{i}" for i in range(N)]}


def shard(batch, lo, hi):
    return {k: v[lo:hi] for k, v in batch.items()}


def engine_run(rank, world, zero_stage, accum, local_loss):
    """One optimizer step (SGD, lr SGD_LR) of a DeepSpeed engine; returns the loss terms and parameter deltas."""
    import deepspeed

    from patentclip.launch.step import train_step_accum

    module = tiny_module(rank, world, local_loss)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=SGD_LR)
    per = N // world // accum
    cfg = {"train_micro_batch_size_per_gpu": per, "gradient_accumulation_steps": accum,
           "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
           "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 unless told otherwise; open_clip does not clip
           "steps_per_print": 1 << 30}
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=cfg)
    batch = image_batch()
    base = rank * (N // world)
    micro = [shard(batch, base + j * per, base + (j + 1) * per) for j in range(accum)]
    total, terms, _ = train_step_accum(engine, micro, argparse.Namespace(zero_stage=zero_stage), torch.device("cpu"),
                                       torch.float32)
    deltas = {n: (p.detach() - before[n]) for n, p in engine.module.named_parameters()}
    return {"total": total.detach(), "terms": {k: v.detach() for k, v in terms.items()}, "deltas": deltas,
            "backward_allreduce": engine.enable_backward_allreduce}


def reference_engine_step():
    """The same step in one plain torch process on all N samples (no DeepSpeed, no accumulation)."""
    module = tiny_module(0, 1, False)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=SGD_LR)
    b = image_batch()
    total, terms, _ = module(b["image"], b["text"], b)
    total.backward()
    opt.step()
    return {"total": total.detach(), "terms": {k: v.detach() for k, v in terms.items()},
            "deltas": {n: (p.detach() - before[n]) for n, p in module.named_parameters()}}


def clamp_run(rank, world, zero_stage, bf16):
    """clamp_logit_scale on the fp32 master copy: returns the master value after clamping 5.0, -0.5 and 2.0."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    from patentclip.launch.step import clamp_logit_scale

    module = tiny_module(rank, world, False)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    cfg = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": zero_stage},
           "zero_allow_untested_optimizer": True, "bf16": {"enabled": bf16}, "steps_per_print": 1 << 30}
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=cfg)
    p = engine.module.clip.logit_scale
    out = []
    for value in (5.0, -0.5, 2.0):
        safe_set_full_fp32_param(p, torch.full((1,), value))
        with torch.no_grad():
            p.fill_(value)  # what the module copy holds after a step that produced this master value
        clamp_logit_scale(engine, argparse.Namespace(zero_stage=zero_stage))
        out.append(float(safe_get_full_fp32_param(p)))
    return out


# -- worker ---------------------------------------------------------------------------------------------------

def worker(rank, world, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    def mean(t):
        t = t.clone().float()
        dist.all_reduce(t)
        return t / world

    results = {"linear": {}, "engine": {}}
    for mode in MODES:
        for key, (spec, weighting) in SPECS.items():
            r = linear_step(spec, weighting, rank, world, mode)
            results["linear"][(mode, key)] = {
                "total": mean(r["total"]), "terms": {k: mean(v) for k, v in r["terms"].items()},
                "rank_terms": r["terms"], "grads": {k: mean(v) for k, v in r["grads"].items()}}

    for impl in SIGLIP_IMPLS:
        r = siglip_step(rank, world, impl)
        results.setdefault("siglip", {})[impl] = {"total": mean(r["total"]),
                                                  "grads": {k: mean(v) for k, v in r["grads"].items()}}

    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    for name, cfg in ENGINE_RUNS.items():
        r = engine_run(rank, world, **cfg)
        results["engine"][name] = {"total": mean(r["total"]), "terms": {k: mean(v) for k, v in r["terms"].items()},
                                   "deltas": r["deltas"], "backward_allreduce": r["backward_allreduce"]}
    results["clamp"] = {f"zero{z}{'_bf16' if bf16 else ''}": clamp_run(rank, world, z, bf16)
                        for z, bf16 in ((1, False), (2, True))}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def single_worker(out):
    """One rank, ZeRO 0, fp32: prepare_engine switches DeepSpeed's 1-rank gradient all-reduce off."""
    import deepspeed

    torch.set_num_threads(1)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    torch.save({f"zero0_accum{k}": engine_run(0, 1, zero_stage=0, accum=k, local_loss=False) for k in (1, 2)}, out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(WORLD),
           "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, HERE, "--worker", str(r), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    single_out = out.with_name("single.pt")
    procs.append(subprocess.Popen([sys.executable, HERE, "--single", str(single_out)],
                                  env={**env, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                                       "MASTER_PORT": str(free_port())},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    t0 = time.time()
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    results = torch.load(out, weights_only=False)
    results["single"] = torch.load(single_out, weights_only=False)
    return results, time.time() - t0


def close(a, b, what, atol=1e-5, rtol=1e-4):
    assert a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol), \
        f"{what}: max abs diff {float((a - b).abs().max()):.3g}\n{a}\n{b}"


def test_siglip_distributed_matches_single_process(two_ranks):
    """The siglip loss on 2 ranks (each rank's images against every rank's texts, exchanged as
    --loss-dist-impl says), averaged over the ranks as DeepSpeed averages gradients, equals SigLIP's formula over
    the concatenated batch written out here: the loss and the gradients of the encoders, scale and bias."""
    results, _ = two_ranks
    ref = siglip_reference()
    for impl in SIGLIP_IMPLS:
        got = results["siglip"][impl]
        close(got["total"], ref["total"], f"siglip {impl} loss")
        for k, g in ref["grads"].items():
            close(got["grads"][k], g, f"siglip {impl} grad {k}")


@pytest.mark.parametrize("mode", ["gwg", "gwg_local"])
@pytest.mark.parametrize("key", list(SPECS))
def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_ranks, mode, key):
    results, _ = two_ranks
    got = results["linear"][(mode, key)]
    spec, weighting = SPECS[key]
    ref = linear_step(spec, weighting, 0, 1, mode)
    close(got["total"], ref["total"], f"{key} total")
    assert set(got["terms"]) == set(ref["terms"])
    for k in ref["terms"]:
        close(got["terms"][k], ref["terms"][k], f"{key} term {k}")
    assert set(got["grads"]) == set(ref["grads"])
    for k in ref["grads"]:
        close(got["grads"][k], ref["grads"][k], f"{key} grad {k}")


@pytest.mark.parametrize("key", list(SPECS))
def test_open_clip_default_gather_matches_open_clip_conventions(two_ranks, key):
    """No --gather-with-grad, no --local-loss: each rank sees the global loss (same value as one process) and,
    as open_clip's ClipLoss, the encoder gradient averaged over ranks is 1/world_size of the full one."""
    results, _ = two_ranks
    got = results["linear"][("default", key)]
    spec, weighting = SPECS[key]
    ref = linear_step(spec, weighting, 0, 1, "default")
    for k in ref["terms"]:
        close(got["terms"][k], ref["terms"][k], f"{key} term {k}")
        close(got["rank_terms"][k], ref["terms"][k], f"{key} rank 0 term {k}")
    for k in ("w_img", "w_txt"):
        close(got["grads"][k], ref["grads"][k] / WORLD, f"{key} grad {k}")


def test_class_positives_across_ranks_come_from_gathered_class_ids(two_ranks):
    """Rank 0 holds classes {0, 1, 2} and rank 1 {6, 0, 1, 3}: the cross-rank positives (class 0 and 1 on both
    ranks) change the loss; a per-rank computation of the positives would not reproduce the global value."""
    from patentclip.plugins.losses import LossSet

    results, _ = two_ranks
    got = results["linear"][("gwg_local", "class_contrastive")]["terms"]["class_contrastive"]
    data = full_data()
    params, _ = linear_model("class_contrastive", "fixed", 0, 1, "gwg")
    crit = LossSet("class_contrastive", loss_args(0, 1), table())
    feats = {"image_features": F.normalize(data["x_img"] @ params["w_img"], dim=-1),
             "text_features": F.normalize(data["x_txt"] @ params["w_txt"], dim=-1),
             "logit_scale": params["logit_scale"].exp()}
    # class ids relabelled per rank (no class shared across ranks): a different value
    cls_split = data["class_id"].clone()
    cls_split[4:] = torch.tensor([6, 4, 5, 3])
    _, t_split = crit(feats, {"class_id": cls_split})
    _, t_true = crit(feats, {"class_id": data["class_id"]})
    close(got, t_true["class_contrastive"].detach(), "class_contrastive")
    assert not torch.allclose(got, t_split["class_contrastive"].detach(), atol=1e-4)


@pytest.mark.parametrize("run", list(ENGINE_RUNS))
def test_deepspeed_accumulation_equals_one_big_batch(two_ranks, run):
    """2 ranks x accum_freq x micro-batch under DeepSpeed = one plain torch SGD step on the 8 samples: loss,
    every term (s_* included) and the update of every parameter (encoders, logit_scale, head, s_k)."""
    results, _ = two_ranks
    got = results["engine"][run]
    ref = reference_engine_step()
    close(got["total"], ref["total"], "total loss", atol=1e-4)
    for k in ref["terms"]:
        close(got["terms"][k], ref["terms"][k], f"term {k}", atol=1e-4)
    moved = 0
    for n, d in ref["deltas"].items():
        close(got["deltas"][n], d, f"update of {n}", atol=2e-6, rtol=1e-3)
        moved += int(d.abs().max() > 0)
    assert moved > 50


@pytest.mark.parametrize("run", ["zero0_accum1", "zero0_accum2"])
def test_single_rank_engine_skips_the_identity_allreduce_and_stays_exact(two_ranks, run):
    results, _ = two_ranks
    got = results["single"][run]
    assert got["backward_allreduce"] is False
    ref = reference_engine_step()
    close(got["total"], ref["total"], "total loss", atol=1e-4)
    for n, d in ref["deltas"].items():
        close(got["deltas"][n], d, f"update of {n}", atol=2e-6, rtol=1e-3)
    # with 2 ranks (ZeRO 1/2) nothing is switched off
    assert all(r["backward_allreduce"] for r in results["engine"].values())


def test_logit_scale_clamp_reaches_the_fp32_master_copy(two_ranks):
    """open_clip's clamp to [0, ln 100] under ZeRO 1 (fp32) and ZeRO 2 (bf16): the optimizer's master copy is
    clamped (an in-place clamp of the module parameter would be overwritten at the next step)."""
    import math

    results, _ = two_ranks
    for run, values in results["clamp"].items():
        assert values[0] == pytest.approx(math.log(100), abs=1e-6), run
        assert values[1] == 0.0, run
        assert values[2] == pytest.approx(2.0, abs=1e-6), run


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    worker(int(sys.argv[2]), int(os.environ["WORLD_SIZE"]), sys.argv[3])
elif __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--single":
    single_worker(sys.argv[2])
