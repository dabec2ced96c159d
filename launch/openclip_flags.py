"""What ``patentclip-train`` does with every flag of ``open_clip_train``: honoured, or refused at start.

``patentclip-train`` parses open_clip_train's own flags with open_clip's parser, so every one of them is accepted
on the command line. This module is the one table of what each means here (``FLAGS``):

* ``honoured``: the flag has open_clip's meaning; ``test`` names the test that shows it.
* ``refused``: the trainer stops before it starts anything, with ``instead``: why, and what to use instead.
  Some flags are refused only for some values (``refuse_when``), e.g. ``--dataset-type csv`` but not
  ``--dataset-type webdataset``; a refused flag left at open_clip's default is never an error.

``openclip_flag_problems(args)`` applies the table (``launch.args.validate_train_args`` lists its lines with the
other problems of the command line, and the run stops before it starts anything);
``docs/openclip_flags.md`` is :func:`render_markdown`'s output (a test keeps the two equal), and another test
fails when open_clip adds, renames or drops a flag that the table does not list.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from open_clip_train.params import parse_args as openclip_parse_args

HONOURED, REFUSED = "honoured", "refused"


@dataclass(frozen=True)
class Flag:
    """One open_clip_train flag (``dest``: its attribute name) and what patentclip-train does with it."""

    dest: str
    status: str
    what: str
    test: str = ""  # honoured: the test that shows it ("tests/file.py::test_name")
    instead: str = ""  # refused: the message (why, and what to use instead)
    refuse_when: Optional[Callable[[Any, Any], bool]] = None  # (value, default) -> refuse? None: value != default

    def refused(self, value, default) -> bool:
        if self.status != REFUSED:
            return False
        if self.refuse_when is not None:
            return bool(self.refuse_when(value, default))
        return value != default


def _h(dest, what, test):
    return Flag(dest, HONOURED, what, test=test)


def _r(dest, what, instead, when=None):
    return Flag(dest, REFUSED, what, instead=instead, refuse_when=when)


E2E = "tests/test_end_to_end.py::test_two_process_training_writes_open_clip_layout"
FLAGS_TEST = "tests/test_openclip_flags.py::"
LOOP_RUN = FLAGS_TEST + "test_loop_flags_in_one_run"
MODEL = FLAGS_TEST + "test_model_flags_reach_open_clip"
OPTIM = FLAGS_TEST + "test_optimizer_and_schedule_flags"
DS_CFG = FLAGS_TEST + "test_deepspeed_config_flags"
TOWERS = FLAGS_TEST + "test_tower_flags"
COCA = "patentclip's losses train the contrastive towers only, not CoCa's captioning decoder"

FLAGS: List[Flag] = [
    # data
    _h("train_data", "training shards (`::`-joined sources, brace patterns, local paths or fsspec URLs)", E2E),
    _h("train_data_upsampling_factors", "weights of the `::`-joined sources (with `--dataset-resampled`)",
       FLAGS_TEST + "test_upsampling_factors_weight_the_sources"),
    _h("val_data", "validation shards (metrics every `--val-frequency` epochs)", E2E),
    _h("train_num_samples", "samples per epoch",
       "tests/test_sampling_and_resume.py::test_class_aware_sampler_in_the_pipeline_balances_classes"),
    _h("val_num_samples", "validation samples", FLAGS_TEST + "test_val_num_samples_limits_validation"),
    _r("dataset_type", "the shards are webdataset shards (`webdataset`, `auto` accepted)",
       "patentclip-train reads patent shards only: build them from a CSV with `patentclip-shards build --format "
       "csv` (docs/importers.md), or make synthetic ones with `patentclip-shards synth`",
       when=lambda v, d: v not in ("webdataset", "auto")),
    _h("dataset_resampled", "shards drawn with replacement",
       "tests/test_sampling_and_resume.py::test_loader_resume_continues_exactly"),
    _r("csv_separator", "CSV datasets", "build shards from the CSV: `patentclip-shards build --format csv "
       "--delimiter ...` (docs/importers.md)"),
    _r("csv_img_key", "CSV datasets", "build shards from the CSV: `patentclip-shards build --format csv "
       "--image-column ...` (docs/importers.md)"),
    _r("csv_caption_key", "CSV datasets", "build shards from the CSV: `patentclip-shards build --format csv "
       "--caption-column ...` (docs/importers.md)"),
    _r("imagenet_val", "ImageNet zero-shot", "zero-shot accuracy is measured on the Locarno classes of --val-data; "
       "for ImageNet, export the model (`patentclip-export`) and run open_clip's evaluation on it"),
    _r("imagenet_v2", "ImageNet-v2 zero-shot", "zero-shot accuracy is measured on the Locarno classes of "
       "--val-data; for ImageNet-v2, export the model (`patentclip-export`) and run open_clip's evaluation on it"),
    _h("cache_dir", "the hub cache where starting weights and tokenizers are found (offline: the login-node "
       "command is printed)", "tests/test_pretrained.py::test_pretrained_tag_resolves_from_the_hub_cache"),
    # logs and checkpoints
    _h("logs", "log root: `<logs>/<name>/{out.log, params.txt, tensorboard/, checkpoints/}`", E2E),
    _h("log_local", "every rank logs to `out-<rank>.log`", LOOP_RUN),
    _h("name", "run name", E2E),
    _h("save_frequency", "`epoch_N.pt` every N epochs (and the last)", LOOP_RUN),
    _h("save_most_recent", "also `epoch_latest.pt` after every epoch", LOOP_RUN),
    _h("delete_previous_checkpoint", "`epoch_{N-1}.pt` deleted when `epoch_N.pt` is written", LOOP_RUN),
    _h("resume", "`latest`, a DeepSpeed checkpoint folder or an open_clip `epoch_N.pt`",
       "tests/test_resume_exact.py::test_every_recipe_and_loss_resumes_bit_for_bit_after_every_kind_of_stop"),
    _r("remote_sync", "periodic sync of the log folder to S3",
       "checkpoints go to object storage directly: `--checkpoint-dir s3://bucket/run` (uploaded, verified and "
       "committed at every save; README 'Running on a cluster')"),
    _r("remote_sync_frequency", "periodic sync of the log folder to S3",
       "checkpoints go to object storage directly: `--checkpoint-dir s3://bucket/run`"),
    _r("remote_sync_protocol", "periodic sync of the log folder to S3",
       "checkpoints go to object storage directly: `--checkpoint-dir s3://bucket/run`"),
    _r("copy_codebase", "copy the code into the log folder and run it from there",
       "patentclip runs from its installed package: install it once per experiment (`make venv`, or "
       "`pip install -c constraints.txt -e .`); params.txt records every argument"),
    # schedule and optimizer
    _h("workers", "data-loader workers per rank", E2E),
    _h("batch_size", "batch size per rank", E2E),
    _h("epochs", "epochs", E2E),
    _h("epochs_cooldown", "epochs of the `const-cooldown` schedule's cooldown", OPTIM),
    _h("lr", "peak learning rate", OPTIM),
    _h("beta1", "AdamW beta1", OPTIM),
    _h("beta2", "AdamW beta2", OPTIM),
    _h("eps", "AdamW epsilon", OPTIM),
    _h("wd", "AdamW weight decay (none on gains, biases, norms, logit scale; as open_clip)", OPTIM),
    _r("momentum", "momentum of timm optimizers", "patentclip-train trains with AdamW (open_clip's default "
       "`--opt adamw`) under DeepSpeed; --momentum only applies to timm optimizers"),
    _h("warmup", "warmup steps", OPTIM),
    _r("opt", "optimizer", "patentclip-train trains with AdamW under DeepSpeed (open_clip's default, `--opt "
       "adamw`); timm optimizers are not supported", when=lambda v, d: str(v).lower() != "adamw"),
    _h("skip_scheduler", "no learning-rate schedule (the lr stays at `--lr`)", LOOP_RUN),
    _h("lr_scheduler", "`cosine`, `const` or `const-cooldown`", OPTIM),
    _h("lr_cooldown_end", "end lr of the cooldown", OPTIM),
    _h("lr_cooldown_power", "power of the cooldown", OPTIM),
    _h("accum_freq", "gradient accumulation with open_clip's feature cache",
       "tests/test_losses_distributed.py::test_deepspeed_accumulation_equals_one_big_batch"),
    _h("grad_clip_norm", "gradient clipping (DeepSpeed `gradient_clipping`)", DS_CFG),
    _h("seed", "seed of every draw", "tests/test_end_to_end.py::test_seeded_runs_repeat"),
    # evaluation
    _h("val_frequency", "validation every N epochs (0: never)", LOOP_RUN),
    _h("zeroshot_frequency", "zero-shot metrics in every N-th validation epoch (and the last)", LOOP_RUN),
    # model
    _h("model", "open_clip model name (open_clip's configs and patentclip's)", E2E),
    _h("pretrained", "starting weights: open_clip tag, hf-hub:, local-dir: or file (plugins/pretrained.py)",
       "tests/test_pretrained.py::test_start_from_a_runs_epoch_checkpoint_and_from_safetensors"),
    _h("pretrained_image", "timm's ImageNet weights for a timm image tower (refused for other towers, where "
       "open_clip would ignore it; plugins/pretrained.py)",
       "tests/test_pretrained.py::test_timm_image_weights_from_the_hub_cache"),
    _h("lock_image", "frozen image tower", TOWERS),
    _h("lock_image_unlocked_groups", "last layer groups of the image tower left trainable", TOWERS),
    _h("lock_image_freeze_bn_stats", "batch-norm statistics of the locked image tower frozen", TOWERS),
    _h("lock_text", "frozen text tower", TOWERS),
    _h("lock_text_unlocked_layers", "last layers of the text tower left trainable", TOWERS),
    _h("lock_text_freeze_layer_norm", "layer norms of the locked text tower frozen (open_clip 3.3 cannot leave them "
       "trainable: `--lock-text` without it is refused)", TOWERS),
    _h("image_mean", "normalisation mean", MODEL),
    _h("image_std", "normalisation std", MODEL),
    _h("image_interpolation", "resize interpolation", MODEL),
    _h("image_resize_mode", "resize mode of the validation transform", MODEL),
    _h("aug_cfg", "open_clip's train augmentations (`scale=`, `color_jitter=` ...)", MODEL),
    _h("grad_checkpointing", "activation checkpointing in both towers", TOWERS),
    _h("local_loss", "each rank's rows against the gathered columns",
       "tests/test_losses_distributed.py::test_two_ranks_equal_one_process_on_the_concatenated_batch"),
    _h("gather_with_grad", "gradient through the feature gather",
       "tests/test_losses_distributed.py::test_two_ranks_equal_one_process_on_the_concatenated_batch"),
    _h("force_context_length", "text context length (model and tokenizer)", MODEL),
    _h("force_image_size", "image size", MODEL),
    _h("force_quick_gelu", "QuickGELU activations", MODEL),
    _h("force_patch_dropout", "patch dropout while training", MODEL),
    _h("force_custom_text", "CustomTextCLIP (text tower as its own module)", MODEL),
    _r("torchscript", "TorchScript model", "DeepSpeed trains the eager module; script or trace the exported model "
       "(`patentclip-export`) for inference; to speed up training use --torchcompile"),
    _h("torchcompile", "`torch.compile` of the CLIP model (in place: checkpoints keep their keys)",
       FLAGS_TEST + "test_torchcompile_trains_the_compiled_model"),
    _r("trace", "torch.jit.trace for inference only (open_clip cannot train a traced model)",
       "patentclip-train trains; evaluate with `patentclip-eval`, or trace the exported model (`patentclip-export`)"),
    _h("use_bn_sync", "batch norm synchronised across ranks (towers with batch norm, several ranks)", TOWERS),
    _r("use_bnb_linear", "bitsandbytes int8 linear layers",
       "not supported under DeepSpeed; train in bf16 (`--precision bf16`) and quantise the exported model"),
    _r("distill_model", "distillation from a teacher model",
       "distillation is not implemented in patentclip-train; use vanilla open_clip on the same shards "
       "(`python -m patentclip.launch.openclip_vanilla --distill-model ...`)"),
    _r("distill_pretrained", "distillation from a teacher model",
       "distillation is not implemented in patentclip-train; use vanilla open_clip on the same shards "
       "(`python -m patentclip.launch.openclip_vanilla --distill-pretrained ...`)"),
    _r("coca_caption_loss_weight", "CoCa caption loss weight", COCA + "; choose losses with --loss"),
    _r("coca_contrastive_loss_weight", "CoCa contrastive loss weight", COCA + "; choose losses with --loss"),
    # precision, devices, processes
    _h("precision", "fp32 or bf16 (fp16/amp on GPU): DeepSpeed mixed precision with fp32 master weights", DS_CFG),
    _h("device", "device (`cuda` picks the local rank's GPU; without a GPU the run is on the CPU, over gloo)",
       FLAGS_TEST + "test_device_flag_picks_the_trainers_device"),
    _h("dist_url", "process-group init method (open_clip's `init_distributed_device`)",
       FLAGS_TEST + "test_dist_flags_reach_the_process_group"),
    _h("dist_backend", "process-group backend (open_clip's `init_distributed_device`)",
       FLAGS_TEST + "test_dist_flags_reach_the_process_group"),
    _h("no_set_device_rank", "do not pick the GPU from the local rank (open_clip's `init_distributed_device`, "
       "CUDA only)", FLAGS_TEST + "test_dist_flags_reach_the_process_group"),
    _r("horovod", "Horovod", "patentclip-train runs under DeepSpeed, launched by `--nproc-per-node`, torchrun or "
       "srun"),
    _r("ddp_static_graph", "DDP static graph", "patentclip-train does not wrap the model in DDP (a DeepSpeed engine "
       "does the data parallelism); there is nothing to set"),
    # logging
    _h("report_to", "`tensorboard`, `wandb`, `all` or a comma list: the same scalars in each",
       FLAGS_TEST + "test_wandb_logs_the_tensorboard_scalars"),
    _h("wandb_notes", "wandb run notes", FLAGS_TEST + "test_wandb_logs_the_tensorboard_scalars"),
    _h("wandb_project_name", "wandb project", FLAGS_TEST + "test_wandb_logs_the_tensorboard_scalars"),
    _h("debug", "DEBUG log level", LOOP_RUN),
    _h("log_every_n_steps", "progress line every N steps", LOOP_RUN),
    # losses
    _h("siglip", "open_clip's SigLipLoss (registered loss `siglip`) and a model with a learned logit bias",
       FLAGS_TEST + "test_siglip_is_open_clips_sigmoid_loss"),
    _h("loss_dist_impl", "distributed implementation of the siglip loss (bidir, shift, reduce, gather)",
       "tests/test_losses_distributed.py::test_siglip_distributed_matches_single_process"),
]
BY_DEST: Dict[str, Flag] = {f.dest: f for f in FLAGS}


def openclip_parser_actions() -> List[argparse.Action]:
    """The actions (flags) of open_clip_train's argument parser, in its order (found by parsing with a parser
    class that records itself: open_clip builds the parser inside ``parse_args``)."""
    made: List[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def recording(self, args=None, namespace=None):
        made.append(self)
        return original(self, args, namespace)

    argparse.ArgumentParser.parse_args = recording
    try:
        openclip_parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return [a for a in made[0]._actions if a.option_strings and a.dest != "help"]


def openclip_defaults() -> Dict[str, Any]:
    return vars(openclip_parse_args([]))


def openclip_flag_problems(args: argparse.Namespace) -> List[str]:
    """The open_clip flags patentclip-train does not honour, set to a refused value: one line per flag, what it is
    and what to use instead (``launch.args.validate_train_args`` lists them with the other problems)."""
    defaults = openclip_defaults()
    problems = []
    for flag in FLAGS:
        value, default = getattr(args, flag.dest, None), defaults.get(flag.dest)
        if flag.refused(value, default):
            shown = "" if isinstance(value, bool) else f" {value}"
            problems.append(f"--{flag.dest.replace('_', '-')}{shown}: {flag.what}. {flag.instead}")
    if args.loss_dist_impl is not None and not args.siglip:
        problems.append(f"--loss-dist-impl {args.loss_dist_impl}: applies to the siglip loss only (--siglip or "
                        f"--loss siglip)")
    if args.lock_text and not args.lock_text_freeze_layer_norm:
        problems.append("--lock-text: open_clip 3.3 locks the text tower's layer norms with it and cannot leave "
                        "them trainable (it stops with an assertion); add --lock-text-freeze-layer-norm")
    if "coca" in str(args.model).lower():
        problems.append(f"--model {args.model}: {COCA}; choose a CLIP model")
    return problems


def render_markdown() -> str:
    """docs/openclip_flags.md: the table, in open_clip's parser order."""
    order = {a.dest: i for i, a in enumerate(openclip_parser_actions())}
    names = {a.dest: ", ".join(f"`{o}`" for o in a.option_strings) for a in openclip_parser_actions()}
    lines = [
        "# open_clip_train flags in patentclip-train",
        "",
        "`patentclip-train` accepts every flag of `open_clip_train` (open_clip's parser reads them). Each one is",
        "either **honoured** (it means what it means in open_clip; the test shows it) or **refused**: the run stops",
        "before it starts anything and says what to use instead. A refused flag left at its default is no error;",
        "some are refused only for some values (`--dataset-type csv`, `--opt` other than `adamw`).",
        "",
        "Generated from `patentclip/launch/openclip_flags.py` (`FLAGS`); `tests/test_openclip_flags.py` fails",
        "when this page and the table differ, or when open_clip has a flag the table does not list.",
        "",
        "| flag | status | in patentclip-train | test / instead |",
        "|---|---|---|---|",
    ]
    for flag in sorted(FLAGS, key=lambda f: order.get(f.dest, len(order))):
        last = f"`{flag.test}`" if flag.status == HONOURED else flag.instead
        lines.append(f"| {names.get(flag.dest, flag.dest)} | {flag.status} | {flag.what} | {last} |")
    lines += ["", "The plugin flags (`--loss`, `--sampler`, `--recipe`, `--zero-stage`, ...) are patentclip's own: "
              "`patentclip-train --help`.", ""]
    return "\n".join(lines)
