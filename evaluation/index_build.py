"""``patentclip-index``: embed every drawing of a shard set into a prior-art index, and keep it up to date.

    patentclip-index build --data 'shards/grants/grants-{000000..000199}.tar' --checkpoint model/ --out prior-art
    patentclip-index add prior-art --data 's3://bucket/shards/week-2024-31/w-{000000..000003}.tar'
    patentclip-index rebuild prior-art --faiss hnsw          # another faiss kind from the stored vectors
    patentclip-index info prior-art

``build`` reads the shards (local paths, brace patterns, ``::``-joined sources or any fsspec URL such as
``s3://``), embeds every drawing with the image tower of a checkpoint (any checkpoint ``patentclip-eval`` reads:
an exported model folder, an open_clip ``epoch_N.pt``, a DeepSpeed folder, at an ``s3://`` URL too) exactly as
``patentclip-eval`` embeds its retrieval database (the evaluation preprocessing, L2-normalised), and writes the
index folder described in :mod:`patentclip.evaluation.index`: one Parquet part per shard, then the faiss index.

* **Split over processes**: under ``torchrun`` / ``srun`` (or with ``--nproc N`` for N local processes, one GPU
  each when there are GPUs) rank r embeds shards r, r + W, r + 2W, ... of the sorted shard list; rank 0 waits for
  the others (a gloo barrier) and writes the faiss index and ``index.json``.
* **Resumable**: each shard's part is committed on its own (Parquet file, then its record); a rerun of the same
  command after a crash, a preemption or Ctrl-C skips every committed part and embeds only the rest.
* **Incremental**: ``add`` (or ``build`` on an existing index) embeds only shards the index does not hold yet and
  appends them: the faiss index is extended, not rebuilt (an ivf index keeps its trained lists; ``rebuild``
  retrains it after many weeks), row ids of existing drawings do not change. The model must be the same one
  (checked by a fingerprint of its weights) and the class table the same (checked by code).
* **Bad input**: an undecodable drawing or a sample without a caption is skipped and recorded in its part's
  ``problems`` (shard, key, reason); a shard that cannot be read after the I/O retries is left out, named in
  ``index.json``'s ``pending_shards`` and in the exit status (1), and is retried by the next run; a drawing whose
  key is already in the index is refused with the part that holds it.

One concern, the ``patentclip-index`` command (embedding over ranks, committing, its flags and the launch of its
ranks); a little over 400 lines because the command's parser and rank launch belong with it. Reading the shards is
:mod:`.index_shards`, the folder format :mod:`.index_store`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from open_clip_train.data import SharedEpoch, expand_urls
from torch.utils.data import DataLoader

from patentclip.evaluation import index as X
from patentclip.evaluation.features import extract_features
from patentclip.evaluation.index_shards import ShardBatches, check_same_classes, shard_classes, shard_sizes
from patentclip.evaluation.loading import load_for_eval
from patentclip.launch.safe_load import TRUST_FLAG, TRUST_HELP
from patentclip.plugins.classes import ClassTable, classes_json_beside
from patentclip.plugins.data import batch as B
from patentclip.plugins.data.stream import PatentStream
from patentclip.plugins.image_transport import ImageTransport
from patentclip.plugins.remote_io import is_remote


class _OneBatch:
    """One batch as a loader: what ``extract_features`` iterates, with the loader's image transport."""

    def __init__(self, batch: Dict, image_transport: ImageTransport):
        self.batch = batch
        self.image_transport = image_transport

    def __iter__(self):
        yield self.batch


# ----------------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------------
def load_model(checkpoint: str, model_name: Optional[str], pretrained: Optional[str], device, seed: int, workdir: str,
               trust: bool = False):
    """The model as patentclip-eval loads it ('untrained' weights seeded by ``seed``; the checkpoint read
    weights-only unless ``trust``, ``--trust-checkpoint``)."""
    torch.manual_seed(seed)
    return load_for_eval(checkpoint, model_name, pretrained, device, workdir, trust=trust)


def model_record(loaded, checkpoint: str, model_name: Optional[str], pretrained: Optional[str], seed: int,
                 device) -> Dict:
    """What index.json records of the model: where it came from, how to load it again, its fingerprint and
    embedding size."""
    ckpt = checkpoint
    if checkpoint and checkpoint != "untrained" and not is_remote(checkpoint) and os.path.exists(checkpoint):
        ckpt = os.path.abspath(checkpoint)
    with torch.no_grad():
        dim = int(loaded.model.encode_text(loaded.tokenizer(["a"]).to(device)).shape[-1])
    return {"checkpoint": ckpt, "name": loaded.name, "model_arg": model_name, "pretrained": pretrained, "seed": seed,
            "source": loaded.source, "fingerprint": X.model_fingerprint(loaded.model), "embed_dim": dim}


# ----------------------------------------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------------------------------------
def embed_shards(loaded, urls: Sequence[str], folder: str, *, model_info: Dict, class_table: ClassTable,
                 batch_size: int, workers: int, device, vector_dtype: str, progress: bool,
                 stop_after_parts: Optional[int] = None) -> Dict[str, str]:
    """Embed ``urls`` (shards without a committed part) and commit one part per shard. Returns
    ``{shard: error}`` of the shards that could not be read."""
    from tqdm import tqdm

    transport = ImageTransport.choose("uint8", loaded.preprocess)  # the evaluation loaders' default
    stream = PatentStream([], is_train=False, batch_size=batch_size, seed=0, rank=0, world_size=1,
                          shared_epoch=SharedEpoch(0), class_table=class_table, preprocess=loaded.preprocess,
                          tokenizer=loaded.tokenizer, image_transport=transport)
    sizes = shard_sizes(urls)
    data = ShardBatches(urls, stream, batch_size, sizes)
    loader = DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=False)
    total = sum(sizes.values()) if None not in sizes.values() else None
    bar = tqdm(total=total, desc="embedding", unit="drawing", disable=not progress, dynamic_ncols=True)
    acc: Dict[str, Dict[str, List]] = {}
    failed: Dict[str, str] = {}
    committed = 0
    for item in loader:
        url = item["shard"]
        if "error" in item:
            failed[url] = item["error"]
            logging.error("shard %s could not be read: %s (left out; the next run retries it)", url, item["error"])
            continue
        a = acc.setdefault(url, {**{c: [] for c in X.META_COLUMNS}, "vectors": [], "side": [0]})
        b = item["batch"]
        if b is not None:
            f = extract_features(loaded.model, _OneBatch(b, transport), device, torch.float32, with_text=False)
            a["vectors"].append(f["image_features"].numpy())
            n = len(f[B.KEY])
            for field in (B.KEY, B.PATENT_ID, B.VIEW):
                a[field] += f[field]
            for field in (B.CLASS_ID, B.GRANT_DAY):
                a[field] += f[field].tolist()
            a["shard"] += [url] * n
            for e in item["extra"]:
                for c in ("title", "member", "offset", "size"):
                    a[c].append(e[c])
                a["side"].append(int(e["side"]))
            bar.update(n)
        if item["last"]:
            vecs = np.concatenate(a["vectors"]) if a["vectors"] else np.zeros((0, model_info["embed_dim"]), np.float32)
            rec = X.write_part(folder, X.part_name(url), {c: a[c] for c in X.META_COLUMNS}, vecs,
                               {"shard": url, "model_fingerprint": model_info["fingerprint"],
                                "problems": item["problems"], "max_side": max(a["side"]), "created": _now()},
                               vector_dtype)
            del acc[url]
            committed += 1
            if item["problems"]:
                logging.warning("%s: %d drawings or parts left out (see %s)", url, len(item["problems"]),
                                X.part_paths(folder, rec["name"])[1])
            if stop_after_parts is not None and committed >= stop_after_parts:
                break  # (tests: a run that stops part-way, as a crash would)
    bar.close()
    return failed


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# build / add
# ----------------------------------------------------------------------------------------------------------------
def _dist_setup():
    """(rank, world size, local rank); joins the process group (gloo) when there are several ranks."""
    from open_clip_train.distributed import world_info_from_env

    local_rank, rank, world = world_info_from_env()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=_dt.timedelta(hours=48))
    return rank, world, local_rank


def _device(arg: Optional[str], local_rank: int) -> torch.device:
    if arg:
        return torch.device(arg)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def finalize(folder: str, urls: Sequence[str], manifest: Dict, *, rebuild: bool, recall_queries: int, seed: int,
             failed: Dict[str, str]) -> Dict:
    """Fold every committed part of ``urls`` that the manifest does not hold yet into the faiss index and
    index.json (in shard-list order); record the shards still missing."""
    held = {p["name"] for p in manifest["parts"]}
    new, pending = [], []
    for u in urls:
        name = X.part_name(u)
        if name in held:
            continue
        rec = X.read_part_record(folder, name)
        if rec is None:
            pending.append(u)
            continue
        if rec.get("model_fingerprint") != manifest["model"]["fingerprint"]:
            raise ValueError(f"{X.part_paths(folder, name)[1]} was embedded by another model (fingerprint "
                             f"{rec.get('model_fingerprint')}, the index's is {manifest['model']['fingerprint']}); "
                             f"remove that part or build into a new folder")
        new.append(rec)
    _check_duplicates(folder, manifest["parts"], new)
    manifest = {**manifest, "pending_shards": pending,
                "updated": _now(), "failed_shards": {u: failed[u] for u in pending if u in failed}}
    if new or rebuild or not manifest["faiss"].get("file"):
        if not manifest["parts"] and not new:
            raise ValueError(f"no drawing could be indexed from {len(urls)} shards (see the errors above)")
        manifest = X.commit_faiss(folder, manifest, new, rebuild=rebuild, recall_queries=recall_queries, seed=seed,
                                  log=lambda msg: logging.info("%s", msg))
        manifest = {**manifest, "pending_shards": pending}
    X.write_json(os.path.join(folder, X.MANIFEST), manifest)
    return manifest


def _check_duplicates(folder: str, held: Sequence[Dict], new: Sequence[Dict]) -> None:
    seen: Dict[str, str] = {}
    for p in list(held) + list(new):
        for k in X.read_part_meta(folder, p["name"], ["key"]).column("key").to_pylist():
            if k in seen:
                raise ValueError(f"drawing {k!r} of part {p['name']} ({p.get('shard')}) is already in the index "
                                 f"(part {seen[k]}); the same grants were indexed from two shards. Remove "
                                 f"{X.part_paths(folder, p['name'])[0]} and its .json, or index into a new folder")
            seen[k] = p["name"]


def run_build(args, folder: str, manifest: Optional[Dict]) -> int:
    """Embed the shards the index does not hold (this rank's share), then (rank 0) finalize."""
    rank, world, local_rank = _dist_setup()
    device = _device(args.device, local_rank)
    urls, _ = expand_urls(args.data)
    if not urls:
        raise ValueError(f"--data {args.data!r} names no shard")
    urls = list(urls)
    classes = shard_classes(urls, args.classes_json)
    os.makedirs(os.path.join(folder, X.PARTS_DIR), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="patentclip-index-") as work:
        if manifest is None:
            loaded = load_model(args.checkpoint, args.model, args.pretrained, device, args.seed, work,
                                args.trust_checkpoint)
            model_info = model_record(loaded, args.checkpoint, args.model, args.pretrained, args.seed, device)
            spec = X.FaissSpec(kind=args.faiss, nlist=args.nlist, nprobe=args.nprobe, m=args.hnsw_m,
                               ef_construction=args.ef_construction, ef_search=args.ef_search)
            manifest = X.new_manifest(model_info, classes, spec, args.vector_dtype)
            existing = X.read_manifest(folder) if os.path.isfile(os.path.join(folder, X.MANIFEST)) else None
            if existing is not None:  # build on an existing index: the same model, or refuse
                if existing["model"]["fingerprint"] != model_info["fingerprint"]:
                    raise ValueError(f"{folder} holds an index of another model ({existing['model']['source']}, "
                                     f"fingerprint {existing['model']['fingerprint'][:12]}; this one "
                                     f"{model_info['fingerprint'][:12]}): index into a new folder")
                if existing["faiss"]["kind"] != spec.kind:
                    logging.warning("%s keeps its faiss kind %s (--faiss %s is for a new index; use "
                                    "`patentclip-index rebuild %s --faiss %s` to change it)", folder,
                                    existing["faiss"]["kind"], spec.kind, folder, spec.kind)
                manifest = existing
        else:
            m = manifest["model"]
            ckpt = args.checkpoint or m["checkpoint"]
            loaded = load_model(ckpt, args.model or m.get("model_arg"), m.get("pretrained"), device,
                                m.get("seed", 0), work, args.trust_checkpoint)
            fp = X.model_fingerprint(loaded.model)
            if fp != m["fingerprint"]:
                raise ValueError(f"the model at {ckpt} is not the one {folder} was built with (fingerprint {fp[:12]}, "
                                 f"the index's {m['fingerprint'][:12]}): a new week must be embedded by the same model")
        check_same_classes([c["code"] for c in manifest["classes"]], [c["code"] for c in classes],
                           os.path.join(folder, X.MANIFEST), args.classes_json or classes_json_beside(args.data))
        class_table = ClassTable.load(args.classes_json) if args.classes_json else \
            ClassTable.load(classes_json_beside(urls[0]))
        if world > 1 and device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        mine = [u for u in urls[rank::world] if X.read_part_record(folder, X.part_name(u)) is None]
        held = len(urls[rank::world]) - len(mine)
        logging.info("rank %d/%d: %d shards to embed on %s (%d already committed)", rank, world, len(mine), device,
                     held)
        t0 = time.time()
        failed = embed_shards(loaded, mine, folder, model_info=manifest["model"], class_table=class_table,
                              batch_size=args.batch_size, workers=args.workers, device=device,
                              vector_dtype=manifest["vector_dtype"], progress=rank == 0 and not args.quiet,
                              stop_after_parts=args.stop_after_parts)
        logging.info("rank %d: embedded %d shards in %.1f s", rank, len(mine) - len(failed), time.time() - t0)
    if args.stop_after_parts is not None:
        return 3
    if world > 1:
        # every rank's failures reach rank 0, which folds the parts in
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, failed)
        failed = {k: v for d in gathered for k, v in d.items()}
    if rank == 0:
        manifest = finalize(folder, urls, manifest, rebuild=False, recall_queries=args.recall_queries,
                            seed=args.seed, failed=failed)
        print(summary(folder, manifest), flush=True)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 1 if failed else 0


def summary(folder: str, manifest: Dict) -> str:
    f = manifest["faiss"]
    n_problems = 0
    for p in manifest["parts"]:
        rec = X.read_part_record(folder, p["name"]) or {}
        n_problems += len(rec.get("problems", []))
    lines = [f"index {folder}: {manifest['rows']} drawings from {len(manifest['parts'])} shards, model "
             f"{manifest['model']['name']} ({manifest['model']['source']}), {manifest['vector_dtype']} vectors of "
             f"{manifest['model']['embed_dim']} dims, faiss {X.FaissSpec(**{k: v for k, v in f.items() if k in X.FaissSpec.__dataclass_fields__}).describe()}"]
    if f.get("recall"):
        lines.append("  recall against exact search: " + ", ".join(f"@{k} {v:.4f}" for k, v in f["recall"]["recall"].items())
                     + f" ({f['recall']['queries']} indexed drawings as queries)")
    if n_problems:
        lines.append(f"  {n_problems} drawings or shard tails left out (the parts' 'problems' in {folder}/parts/*.json)")
    if manifest.get("pending_shards"):
        lines.append(f"  {len(manifest['pending_shards'])} shards NOT indexed yet (rerun the same command): "
                     + ", ".join(manifest["pending_shards"][:5]) + (" ..." if len(manifest["pending_shards"]) > 5 else ""))
    return "\n".join(lines)


def rebuild(folder: str, args) -> int:
    manifest = X.read_manifest(folder)
    spec = X.FaissSpec(kind=args.faiss, nlist=args.nlist, nprobe=args.nprobe, m=args.hnsw_m,
                       ef_construction=args.ef_construction, ef_search=args.ef_search)
    manifest = {**manifest, "faiss": {**manifest["faiss"], **asdict(spec)}}
    parts = manifest["parts"]
    manifest = X.commit_faiss(folder, {**manifest, "parts": []}, parts, rebuild=True,
                              recall_queries=args.recall_queries, seed=args.seed, log=print)
    print(summary(folder, manifest))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
def _add_faiss_args(p) -> None:
    g = p.add_argument_group("faiss index")
    g.add_argument("--faiss", choices=X.KINDS, default="flat",
                   help="flat: exact inner product (IndexFlatIP; default). ivf: inverted lists (IndexIVFFlat), "
                        "hnsw: graph (IndexHNSWFlat): approximate, faster on millions of drawings; their recall@K "
                        "against exact search is measured and printed.")
    g.add_argument("--nlist", type=int, default=None, help="ivf: number of lists (default about 4 sqrt(drawings)).")
    g.add_argument("--nprobe", type=int, default=32, help="ivf: lists searched per query. Default: %(default)s.")
    g.add_argument("--hnsw-m", type=int, default=32, help="hnsw: graph degree M. Default: %(default)s.")
    g.add_argument("--ef-construction", type=int, default=200, help="hnsw: efConstruction. Default: %(default)s.")
    g.add_argument("--ef-search", type=int, default=128, help="hnsw: efSearch. Default: %(default)s.")
    g.add_argument("--recall-queries", type=int, default=1000,
                   help="Indexed drawings used as queries to measure an approximate index's recall. "
                        "Default: %(default)s.")


def _add_run_args(p) -> None:
    g = p.add_argument_group("embedding")
    g.add_argument("--batch-size", type=int, default=64, help="Drawings per forward pass. Default: %(default)s.")
    g.add_argument("--workers", type=int, default=2,
                   help="Data-loader workers (decoding) per process. Default: %(default)s.")
    g.add_argument("--device", default=None, help="Default: cuda:<local rank> when there is a GPU, else cpu.")
    g.add_argument("--nproc", type=int, default=None,
                   help="Start this many local processes (ranks), e.g. one per GPU. Under torchrun/srun the ranks "
                        "come from the environment instead.")
    g.add_argument("--classes-json", default=None, help="Default: the classes.json beside the shards.")
    g.add_argument("--seed", type=int, default=0, help="Seed of 'untrained' weights and of the recall sample.")
    g.add_argument("--quiet", action="store_true", help="No progress bar.")
    g.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    g.add_argument("--stop-after-parts", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-index", allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n", 1)[1] + "\nFormat and search: "
                                "docs/search.md, patentclip.evaluation.index.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="Embed a shard set into a new index (or complete / extend an existing one).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    b.add_argument("--data", required=True, help="Shards: brace patterns, '::'-joined sources, local or s3:// URLs.")
    b.add_argument("--out", required=True, help="The index folder (created; a rerun resumes it).")
    b.add_argument("--checkpoint", required=True,
                   help="The model: an exported folder, epoch_N.pt, a DeepSpeed folder, an s3:// URL of these, or "
                        "'untrained' (with --model).")
    b.add_argument("--model", default=None, help="open_clip model name when the checkpoint does not record it.")
    b.add_argument("--pretrained", default=None, help="open_clip pretrained tag (baselines).")
    b.add_argument("--vector-dtype", choices=sorted(X.VECTOR_DTYPES), default="float16",
                   help="How vectors are stored in the parts. Default: %(default)s.")
    _add_faiss_args(b)
    _add_run_args(b)
    a = sub.add_parser("add", help="Embed new shards (a new week of grants) into an existing index.",
                       allow_abbrev=False)
    a.add_argument("index", help="The index folder.")
    a.add_argument("--data", required=True, help="The new shards.")
    a.add_argument("--checkpoint", default=None,
                   help="Where the index's model is now, when it moved (checked against the fingerprint).")
    a.add_argument("--model", default=None, help=argparse.SUPPRESS)
    a.add_argument("--recall-queries", type=int, default=1000, help="As for build.")
    _add_run_args(a)
    r = sub.add_parser("rebuild", help="Rebuild the faiss index from the stored vectors (another kind, retrained "
                                       "ivf lists).", allow_abbrev=False)
    r.add_argument("index", help="The index folder.")
    r.add_argument("--seed", type=int, default=0)
    _add_faiss_args(r)
    i = sub.add_parser("info", help="What an index holds.", allow_abbrev=False)
    i.add_argument("index", help="The index folder.")
    i.add_argument("--json", action="store_true", help="index.json as it is.")
    return p


def relaunch(argv: Sequence[str], nproc: int) -> int:
    """``--nproc N``: start N local ranks with torchrun's launcher and wait (as patentclip-train does)."""
    import socket
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from patentclip.launch.args import strip_flag

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0, monitor_interval=1)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "patentclip.evaluation.index_build",
                                               *strip_flag(list(argv), "--nproc"))
    except ChildFailedError as exc:
        print(f"patentclip-index: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    try:
        if args.command == "info":
            m = X.read_manifest(args.index)
            print(json.dumps(m, indent=1) if args.json else summary(args.index, m))
            return 0
        if args.command == "rebuild":
            return rebuild(args.index, args)
        if getattr(args, "nproc", None) and args.nproc > 1 and "RANK" not in os.environ:
            return relaunch(argv, args.nproc)
        from patentclip.plugins.builtin import load_builtin_plugins

        load_builtin_plugins()
        if args.command == "build":
            return run_build(args, args.out, None)
        return run_build(args, args.index, X.read_manifest(args.index))
    except (FileNotFoundError, ValueError) as exc:
        print(f"patentclip-index: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
