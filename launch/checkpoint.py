"""Checkpoints of a patentclip run: local or in object storage, complete or not at all.

One concern (a run's checkpoints: written, committed, found again and restored, under one commit protocol) in
about 520 lines: the writer and the resume side share the protocol's rules (what "complete" means, which tag is
latest, local and remote agreeing), and splitting them would write those rules twice.

Layout (``--checkpoint-dir``, default ``<logs>/<name>/checkpoints``, open_clip's place; any fsspec URL such as
``s3://bucket/run`` works; a remote run stages its files in ``<logs>/<name>/checkpoints`` first; every file name
and field is defined in :mod:`patentclip.launch.checkpoint_format`, which also reads checkpoints back):

    epoch_<N>.pt            open_clip format {epoch, name, state_dict}: vanilla open_clip loads it
                            (``--pretrained epoch_N.pt``; logit_scale stored 0-dim as open_clip has it)
    epoch_latest.pt         with ``--save-most-recent``: a copy of the newest epoch_<N>.pt (open_clip's name)
    deepspeed/<tag>/        DeepSpeed engine state: model, optimizer, ZeRO partitions (one file per rank),
                            plus ``meta.json`` (epoch, step, the size of every file) written last
    deepspeed/latest        the tag of the newest COMPLETE checkpoint

A checkpoint holds the DeepSpeed engine state (model with the loss plugins' parameters, optimizer, ZeRO
partitions), and as client state the epoch and step to resume at, every rank's data-loader position and RNG
states, the run's arguments and the class table. Tags are ``epoch_N`` (end of epoch N) and ``step_S``
(mid-epoch, ``--save-every-n-steps`` or a stop signal).

Saving is a commit protocol: every rank writes its files locally; for a remote directory every rank uploads
the files it wrote (retried with backoff) and rank 0 checks that every file of the tag is there with its size;
only then are ``meta.json`` and ``latest`` written, in the remote folder first and then in the local one, so the
local ``latest`` never names a checkpoint the remote folder does not have. A crash or an outage at any point
before that leaves ``latest`` on the previous complete checkpoint; a failed upload raises after its retries.
Before ``latest`` moves, rank 0 checks it still owns the run (``launch/runlock.py``: a run that lost its lock
never names a checkpoint). Temporary files have names of their own (host, pid, a random part), never a fixed
one. Only the newest ``--keep-checkpoints`` DeepSpeed checkpoints are kept (never the one ``latest`` names).

A full disk: a run starts only if its checkpoint folder has room for one checkpoint (the size of the last one,
or an estimate from the parameter counts, :func:`estimate_checkpoint_bytes`); a save that fails for lack of space
removes what it had written of the new checkpoint and raises :class:`CheckpointError` naming the folder, the free
space and the space needed; ``latest`` and the earlier checkpoints are untouched.

Every checkpoint carries what rebuilds its model without the run folder: the model name and the
``create_model_and_transforms`` arguments (``model_args``: pretrained tag, forced QuickGELU, image size, context
length, preprocessing), in ``epoch_N.pt`` and in the DeepSpeed client state. So nothing a later start writes into
the run folder (``params.txt``) changes how an earlier checkpoint is read.

``--resume latest`` takes the newest complete checkpoint found locally or remotely (downloading it if it is
only remote); ``--resume <dir or url>`` a DeepSpeed checkpoint folder (its ``latest`` or a tag folder) and
``--resume <file.pt>`` the weights of an open_clip checkpoint, starting at its epoch with a fresh optimizer
(as open_clip does for a bare checkpoint).
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import random
import re
import shutil
from typing import Callable, Dict, List, Optional, Tuple

import fsspec
import numpy as np
import torch
import torch.distributed as dist

from patentclip.launch.checkpoint_format import (DS_SUBDIR, HEAD_KEY, LOSSES_KEY, META, MODEL_ARGS_KEY, deepspeed_dir,
                                               latest_tag, load_open_clip_state_dict, model_args,
                                               open_clip_checkpoint, read_meta, tag_complete)
from patentclip.launch import safe_load
from patentclip.launch.args import args_as_json
from patentclip.launch.diskspace import free_bytes, human, is_disk_full, temp_name, write_atomic
from patentclip.plugins import fault_points
from patentclip.plugins.remote_io import is_remote, retry

LATEST_PT = "epoch_latest.pt"  # --save-most-recent
# retries of a checkpoint upload, download or commit (default 5, fewer than the shard reader's
# PATENTCLIP_IO_RETRIES: a checkpoint taken at a stop signal must be committed within the scheduler's grace time,
# and 5 retries wait 15.5 s in all at the default backoff); the waits follow PATENTCLIP_IO_BACKOFF
UPLOAD_RETRIES_ENV = "PATENTCLIP_UPLOAD_RETRIES"
DEFAULT_UPLOAD_RETRIES = 5


class CheckpointError(RuntimeError):
    """A checkpoint could not be written completely; ``latest`` still names the previous complete one."""


def estimate_checkpoint_bytes(module: torch.nn.Module, zero_stage: int, with_open_clip_file: bool = True) -> int:
    """Bytes one checkpoint of ``module`` takes (all ranks together): the DeepSpeed model states (the module's
    tensors at their dtype), AdamW's two fp32 moments per trainable parameter, with ZeRO 1/2 also the fp32
    master copy, and the open_clip ``epoch_N.pt`` (fp32 CLIP weights); plus 1 MiB of pickling and metadata."""
    # a module's extra state (e.g. ArcFace's label table, a dict) is not a tensor: counted in the 1 MiB below
    tensors = [t for t in module.state_dict().values() if isinstance(t, torch.Tensor)]
    module_bytes = sum(t.numel() * t.element_size() for t in tensors)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    optimizer = (8 if zero_stage == 0 else 12) * trainable
    clip = getattr(module, "clip", module)
    open_clip_bytes = sum(t.numel() * 4 for t in clip.state_dict().values()
                          if isinstance(t, torch.Tensor)) if with_open_clip_file else 0
    return module_bytes + optimizer + open_clip_bytes + (1 << 20)


def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def _rank_files(names: List[str], rank: int) -> List[str]:
    """The files of a DeepSpeed tag folder written by ``rank`` (rank 0 also owns the model states and meta)."""
    pat = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_")
    mine = []
    for n in names:
        m = pat.match(n)
        if m:
            if int(m.group(2)) == rank:
                mine.append(n)
        elif rank == 0:
            mine.append(n)
    return sorted(mine)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _with_retries(fn, what: str, retries: int):
    """``fn()`` with the one retry rule (plugins/remote_io.py), ``retries`` times, every error retried (a missing
    object may be an eventually consistent listing); raises :class:`CheckpointError` after the last."""
    return retry(fn, what, retries=retries, error=CheckpointError, give_up=())


def _upload(local_file: str, url: str, retries: int) -> None:
    size = os.path.getsize(local_file)

    def put():
        fs, path = _fs(url)
        fs.put_file(local_file, path)
        got = fs.info(path)["size"]
        if got != size:
            raise IOError(f"{url}: uploaded size {got} != local size {size}")

    _with_retries(put, f"upload of {url}", retries)
    fault_points.hold("upload", url)  # the crash and outage tests act here (plugins/fault_points.py)


def rng_state() -> Dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: Optional[Dict]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _gather(obj, world_size: int) -> list:
    if world_size > 1:
        out = [None] * world_size
        dist.all_gather_object(out, obj)
        return out
    return [obj]


class CheckpointStore:
    """Where a run's checkpoints live (local staging + optional remote folder) and how they are committed.

    ``fence``: called by rank 0 right before ``latest`` moves; it raises when this run no longer owns its folder
    (``RunLocks.verify``). ``needed``: the bytes one checkpoint takes, once known (the estimate at the start,
    then the size of the last one written)."""

    def __init__(self, args, fence: Optional[Callable[[], None]] = None):
        self.args = args
        self.local = args.checkpoint_path
        self.remote = args.checkpoint_dir if is_remote(args.checkpoint_dir) else None
        self.keep = int(args.keep_checkpoints)
        self.retries = int(os.environ.get(UPLOAD_RETRIES_ENV, str(DEFAULT_UPLOAD_RETRIES)))
        self.fence = fence
        self.needed: Optional[int] = None

    @property
    def local_ds(self) -> str:
        return deepspeed_dir(self.local)

    @property
    def remote_ds(self) -> Optional[str]:
        return posixpath.join(self.remote, DS_SUBDIR) if self.remote else None

    # -- space -----------------------------------------------------------------------------------------
    def last_checkpoint_bytes(self) -> Optional[int]:
        """The size of the newest complete local checkpoint (its DeepSpeed files and its epoch_N.pt), if any."""
        tag = latest_tag(self.local_ds)
        meta = read_meta(self.local_ds, tag) if tag else None
        if not meta:
            return None
        pt = os.path.join(self.local, f"epoch_{meta['epoch']}.pt")
        return sum(int(n) for n in meta["files"].values()) + (os.path.getsize(pt) if os.path.isfile(pt) else 0)

    def check_space(self, estimate: int) -> None:
        """Refuse to start a run whose checkpoint folder has no room for one checkpoint (rank 0)."""
        last = self.last_checkpoint_bytes()
        self.needed = last or estimate
        os.makedirs(self.local, exist_ok=True)
        free = free_bytes(self.local)
        if free < self.needed:
            how = f"the last one took {human(last)}" if last else "estimated from the model's parameters"
            raise CheckpointError(
                f"not enough space for a checkpoint in {self.local}: {human(free)} free, a checkpoint of this run "
                f"needs about {human(self.needed)} ({how}). Free space there (older checkpoints can go: "
                f"--keep-checkpoints K keeps the newest K) or write checkpoints elsewhere with --checkpoint-dir. "
                f"Nothing was written.")

    # -- save ------------------------------------------------------------------------------------------
    def save(self, engine, *, epoch: int, step: int, class_table, loader_states: list,
             tag: Optional[str] = None, head_state: Optional[Dict] = None,
             loss_states: Optional[Dict] = None) -> str:
        """Save the state to resume at (``epoch``, ``step``). Collective: call it on every rank."""
        args = self.args
        mid_epoch = tag is not None
        tag = tag or f"epoch_{epoch}"
        client_state = {"epoch": epoch, "step": step, "name": args.name, "model": args.model,
                        MODEL_ARGS_KEY: model_args(args),
                        "classes": [c.__dict__ for c in class_table.classes], "loader": loader_states,
                        "rng": _gather(rng_state(), args.world_size), "args": args_as_json(args)}
        if head_state:
            client_state[HEAD_KEY] = {"config": head_state["config"]}
        local_tag = os.path.join(self.local_ds, tag)
        pt_file = os.path.join(self.local, f"epoch_{epoch}.pt")
        free_before = free_bytes(self.local)
        error = None
        try:  # the tag folder first, so that DeepSpeed's own makedirs (before its first barrier) cannot fail
            os.makedirs(local_tag, exist_ok=True)
        except OSError as exc:
            error = exc
        if not any(e for e in _gather(error is not None, args.world_size)):
            try:
                engine.save_checkpoint(self.local_ds, tag=tag, client_state=client_state, save_latest=False)
            except Exception as exc:
                error = exc
                if dist.is_initialized():
                    dist.barrier()  # the barrier save_checkpoint ends with, which this rank did not reach
            if error is None and args.rank == 0 and not mid_epoch:
                oc = open_clip_checkpoint(engine.module.clip, epoch=epoch, name=args.name, model_name=args.model,
                                          classes=client_state["classes"], head_state=head_state,
                                          model_args=client_state[MODEL_ARGS_KEY])
                if loss_states:
                    oc[LOSSES_KEY] = loss_states
                tmp = temp_name(pt_file)
                try:
                    torch.save(oc, tmp)
                    os.replace(tmp, pt_file)
                    if args.save_most_recent:  # open_clip's --save-most-recent: the newest epoch as epoch_latest.pt
                        tmp = temp_name(os.path.join(self.local, LATEST_PT))
                        shutil.copyfile(pt_file, tmp)
                        os.replace(tmp, os.path.join(self.local, LATEST_PT))
                except Exception as exc:
                    error = exc
                    _remove(tmp)
        failures = _gather(None if error is None else (type(error).__name__, str(error),
                                                       is_disk_full(error, self.local, self.needed or 0)),
                           args.world_size)
        if any(failures):
            if args.rank == 0:
                shutil.rmtree(local_tag, ignore_errors=True)  # the partial checkpoint, never named by latest
            if dist.is_initialized():
                dist.barrier()
            raise CheckpointError(self._write_failure(tag, epoch, step, [f for f in failures if f], free_before))
        if dist.is_initialized():
            dist.barrier()
        ok, error = True, None
        try:
            if self.remote:
                mine = _rank_files(sorted(os.listdir(local_tag)), args.rank)
                for name in mine:
                    _upload(os.path.join(local_tag, name), posixpath.join(self.remote_ds, tag, name), self.retries)
                if args.rank == 0 and not mid_epoch:
                    for name in [f"epoch_{epoch}.pt"] + ([LATEST_PT] if args.save_most_recent else []):
                        _upload(os.path.join(self.local, name), posixpath.join(self.remote, name), self.retries)
        except CheckpointError as exc:
            ok, error = False, str(exc)
        oks = _gather((ok, error), args.world_size)
        if not all(o for o, _ in oks):
            errors = "; ".join(e for o, e in oks if not o)
            raise CheckpointError(f"checkpoint {tag} (epoch {epoch}, step {step}) was not committed: {errors}. "
                                  f"'latest' still names the previous complete checkpoint.")
        committed = True
        if args.rank == 0:
            try:
                self._commit(tag, epoch, step)
            except CheckpointError as exc:
                committed, error = False, str(exc)
        committed_all = _gather((committed, error), args.world_size)[0] if args.world_size > 1 else (committed, error)
        if not committed_all[0]:
            raise CheckpointError(f"checkpoint {tag} was uploaded but not committed: {committed_all[1]}. "
                                  f"'latest' still names the previous complete checkpoint, locally and remotely.")
        if args.rank == 0:
            logging.info("Saved checkpoint %s (epoch %d, step %d) to %s", tag, epoch, step,
                         self.remote or self.local)
            self.needed = self.last_checkpoint_bytes() or self.needed
            self._prune(tag, epoch)
        if dist.is_initialized():
            dist.barrier()
        return tag

    def _write_failure(self, tag: str, epoch: int, step: int, failures: list, free_before: int) -> str:
        previous = latest_tag(self.local_ds)
        kept = (f"'latest' still names {previous}" if previous else "no earlier checkpoint of this run exists")
        if any(full for _, _, full in failures):
            need = f"a checkpoint of this run takes about {human(self.needed)}" if self.needed else \
                "a checkpoint did not fit"
            return (f"checkpoint {tag} (epoch {epoch}, step {step}) could not be written: the disk holding "
                    f"{self.local} is full ({human(free_before)} free before this save; {need}). The partial "
                    f"checkpoint was removed and {kept}; earlier checkpoints are untouched. Free space there "
                    f"(--keep-checkpoints K keeps only the newest K) or use --checkpoint-dir, then resume with "
                    f"--resume latest.")
        errors = "; ".join(f"{kind}: {msg}" for kind, msg, _ in failures)
        return (f"checkpoint {tag} (epoch {epoch}, step {step}) could not be written to {self.local}: {errors}. "
                f"The partial checkpoint was removed and {kept}.")

    def _commit(self, tag: str, epoch: int, step: int) -> None:
        """Name ``tag`` as the newest complete checkpoint: remote folder first, then the local one."""
        local_tag = os.path.join(self.local_ds, tag)
        files = {n: os.path.getsize(os.path.join(local_tag, n)) for n in sorted(os.listdir(local_tag)) if n != META}
        meta = json.dumps({"tag": tag, "epoch": epoch, "step": step, "files": files,
                           "world_size": self.args.world_size, "zero_stage": self.args.zero_stage}, indent=1)
        if self.fence is not None:
            try:
                self.fence()
            except Exception as exc:
                raise CheckpointError(f"{tag} not named as latest: {exc}") from exc
        if self.remote:
            fs, path = _fs(self.remote_ds)

            def verify_and_commit():
                listed = {posixpath.basename(p["name"]): int(p["size"])
                          for p in fs.ls(posixpath.join(path, tag), detail=True, refresh=True)}
                missing = {n: s for n, s in files.items() if listed.get(n) != s}
                if missing:
                    raise IOError(f"{self.remote_ds}/{tag}: files missing or of the wrong size: {sorted(missing)}")
                fs.pipe_file(posixpath.join(path, tag, META), meta.encode())
                fs.pipe_file(posixpath.join(path, "latest"), tag.encode())

            _with_retries(verify_and_commit, f"commit of {self.remote_ds}/{tag}", self.retries)
        try:
            write_atomic(os.path.join(local_tag, META), meta)
            write_atomic(os.path.join(self.local_ds, "latest"), tag)
        except OSError as exc:
            raise CheckpointError(f"{tag}: the local commit in {self.local_ds} failed: {exc}") from exc
        fault_points.hold("commit", local_tag)  # the kill-after-a-checkpoint tests act here

    def _prune(self, newest: str, epoch: int) -> None:
        if self.args.delete_previous_checkpoint:
            prev = os.path.join(self.local, f"epoch_{epoch - 1}.pt")
            if os.path.exists(prev):
                os.remove(prev)
        if self.keep <= 0:
            return
        for ds_dir in filter(None, (self.local_ds, self.remote_ds)):
            try:
                tags = self.list_tags(ds_dir)
            except (OSError, FileNotFoundError):
                continue
            for tag, _ in tags[:-self.keep]:
                if tag == newest:
                    continue
                fs, path = _fs(ds_dir)
                try:
                    fs.rm(posixpath.join(path, tag), recursive=True)
                except (OSError, FileNotFoundError) as exc:
                    logging.warning("could not delete old checkpoint %s/%s: %s", ds_dir, tag, exc)

    @staticmethod
    def list_tags(ds_dir: str) -> List[Tuple[str, int]]:
        """Complete tags of a DeepSpeed folder, oldest first, as (tag, step)."""
        fs, path = _fs(ds_dir)
        out = []
        for p in fs.ls(path, detail=False):
            tag = posixpath.basename(p.rstrip("/"))
            meta = read_meta(ds_dir, tag)
            if meta is not None and tag_complete(ds_dir, tag):
                out.append((tag, int(meta["step"])))
        return sorted(out, key=lambda t: t[1])

    # -- resume ----------------------------------------------------------------------------------------
    def find_latest(self) -> Optional[Tuple[str, str]]:
        """(DeepSpeed folder, tag) of the newest complete checkpoint, local or remote."""
        best = None
        for ds_dir in filter(None, (self.local_ds, self.remote_ds)):
            tag = latest_tag(ds_dir)
            if tag is None:
                continue
            meta = read_meta(ds_dir, tag) or {}
            step = int(meta.get("step", -1))
            if best is None or step > best[2]:
                best = (ds_dir, tag, step)
        return (best[0], best[1]) if best else None

    def fetch(self, ds_dir: str, tag: str) -> str:
        """A local DeepSpeed folder holding ``tag`` (downloads a remote tag into the local staging folder)."""
        if not is_remote(ds_dir):
            return ds_dir
        local_tag = os.path.join(self.local_ds, tag)
        if os.path.isdir(local_tag) and tag_complete(self.local_ds, tag):
            return self.local_ds
        tmp = local_tag + f".download-{self.args.rank}"
        shutil.rmtree(tmp, ignore_errors=True)
        fs, path = _fs(ds_dir)

        def get():
            fs.get(posixpath.join(path, tag) + "/", tmp + "/", recursive=True)

        _with_retries(get, f"download of {ds_dir}/{tag}", self.retries)
        if dist.is_initialized():
            dist.barrier()
        if self.args.rank == 0 or not os.path.isdir(local_tag):
            try:
                os.replace(tmp, local_tag) if not os.path.isdir(local_tag) else shutil.rmtree(tmp, True)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        logging.info("Downloaded checkpoint %s/%s to %s", ds_dir, tag, local_tag)
        return self.local_ds


def resolve_resume(args, store: Optional[CheckpointStore] = None) -> Optional[Tuple[str, str, Optional[str]]]:
    """What ``--resume`` points at: ("deepspeed", folder, tag) or ("open_clip", file, None) or None."""
    if not args.resume:
        return None
    if args.resume == "latest":
        found = (store or CheckpointStore(args)).find_latest()
        return ("deepspeed", found[0], found[1]) if found else None
    path = args.resume
    fs, p = _fs(path)
    if fs.isfile(p):
        return ("open_clip", path, None)
    if fs.isdir(p):
        for ds_dir in (path, posixpath.join(path, DS_SUBDIR)):
            tag = latest_tag(ds_dir)
            if tag:
                return ("deepspeed", ds_dir, tag)
        names = [posixpath.basename(n) for n in fs.ls(p, detail=False)]
        if any(n.startswith("mp_rank_") for n in names):
            return ("deepspeed", posixpath.dirname(path.rstrip("/")), posixpath.basename(path.rstrip("/")))
    raise FileNotFoundError(
        f"--resume {path}: not a checkpoint (expected 'latest', an open_clip epoch_N.pt file, or a DeepSpeed "
        f"checkpoint folder with a 'latest' file or mp_rank_* files)")


def resolve_zero_stage(args, target) -> int:
    """The ZeRO stage this run uses. ``--zero-stage auto``: the stage of the DeepSpeed checkpoint being resumed
    (its meta.json says), else 1 with several ranks and 0 with one. An explicit stage that cannot load the
    checkpoint (stage 0 keeps the whole optimizer in the model-states file, stages 1/2 keep per-rank
    partitions) is refused here, before anything is built, with the stage to use."""
    saved = None
    if target and target[0] == "deepspeed":
        saved = (read_meta(target[1], target[2]) or {}).get("zero_stage")  # meta.json: the resolved stage
    if args.zero_stage == "auto":
        if saved is not None:
            logging.info("--zero-stage auto: ZeRO stage %d, as the checkpoint being resumed", saved)
            return saved
        return 1 if args.world_size > 1 else 0
    stage = int(args.zero_stage)
    if saved is not None and (saved == 0) != (stage == 0):
        raise SystemExit(
            f"--zero-stage {stage} cannot resume {posixpath.join(target[1], target[2])}: it was written with ZeRO "
            f"stage {saved} (stage 0 and stages 1/2 store the optimizer differently). Pass --zero-stage {saved} "
            f"or --zero-stage auto.")
    return stage


def load_weights_before_engine(model, target, trust: bool = False) -> Tuple[int, Dict]:
    """For ``--resume <file.pt>``: load open_clip weights into the model BEFORE the DeepSpeed engine is built
    (the engine copies parameters into its fp32/bf16 partitions at init). Returns the checkpoint's epoch and the
    checkpoint (for the classification head it may carry). Read weights-only (``launch/safe_load.py``)."""
    _, path, _ = target
    with fsspec.open(path, "rb") as f:
        ckpt = safe_load.load(f, path, trust=trust, map_location="cpu")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    load_open_clip_state_dict(model, sd)
    epoch = int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0
    logging.info("Loaded open_clip weights from %s (epoch %d); optimizer state starts fresh", path, epoch)
    return epoch, ckpt if isinstance(ckpt, dict) else {}


def restore_engine(engine, target, store: CheckpointStore) -> Tuple[int, int, Dict]:
    """For a DeepSpeed checkpoint: restore model, optimizer and ZeRO partitions and this rank's RNG states;
    returns (epoch, step, client_state). Collective: call it on every rank."""
    _, path, tag = target
    local = store.fetch(path, tag)
    try:
        with safe_load.weights_only_loads(os.path.join(local, tag), trust=store.args.trust_checkpoint):
            load_path, client_state = engine.load_checkpoint(local, tag=tag)
    except RuntimeError as exc:
        if "size mismatch" not in str(exc) and "Missing key" not in str(exc) and "Unexpected key" not in str(exc):
            raise
        first = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise CheckpointError(
            f"--resume: {posixpath.join(path, tag)} holds another model than this run's ({store.args.model} with "
            f"these flags): {first} ... Resume it with the flags it was written with (its params are in the "
            f"checkpoint's client state and beside it in params.txt) or start a new run (--name). The run's "
            f"params.txt and checkpoints are unchanged.") from None
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(local, tag)}")
    rngs = client_state.get("rng") or []
    if len(rngs) == store.args.world_size:
        set_rng_state(rngs[store.args.rank])
    epoch, step = int(client_state.get("epoch", 0)), int(client_state.get("step", 0))
    logging.info("Resumed DeepSpeed checkpoint %s (epoch %d, step %d)", posixpath.join(path, tag), epoch, step)
    return epoch, step, client_state
