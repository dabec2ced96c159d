"""The streaming patent data pipeline (dataset plugin ``patent-wds``).

Per data-loader worker the pipeline is

    shard list --(deterministic shuffle: seed, epoch)--> this rank's and worker's shards (as open_clip splits them)
      -> shard groups of ``--shuffle-group-shards`` shards
      -> tar members -> samples (webdataset's tar reader; a corrupt member is skipped and counted)
      -> patents: the adjacent drawings of one patent -> one training example per drawing, paired (multi-view
         mode) with one other view of the same patent, drawn from (seed, epoch, key)
      -> sampler: each example emitted m times (0 = dropped), m from the sampler plugin (seed, epoch, key)
      -> shuffle within the group: a permutation seeded by (seed, epoch, group); the repeats of one drawing are
         then moved at least a batch apart (samplers.spread_repeats): no batch holds a drawing twice
      -> decode, caption draw (seed, epoch, key), open_clip preprocess + patent augmentations with torch's RNG
         seeded from (seed, epoch, key); grey drawings stay on one channel until ToTensor
         (plugins/grey_preprocess.py: the same tensors, a third of the resize work); with the uint8 image
         transport (default) the worker stops at the uint8 pixels and the step normalises them on the device
         (plugins/image_transport.py: the same tensors, a twelfth of the bytes)
      -> batches

so every random choice is a pure function of (seed, epoch, position or key), and a run is repeatable without
hidden RNG state. A batch is a dict:

    image      (B, 3, H, W) float, or with the uint8 transport (B, 1 or 3, H, W) uint8 plus ``image_finish``, the
               DeviceNormalize that makes the float tensor on the device (``image_transport.finish_images``),
               and, when the preprocess erases, image_erase (B, erasing steps, 4) int: the boxes to paint there
    text       (B, context_length) long: one caption per use, tokenized
    class_id   (B,) long              grant_day  (B,) long: days since 1970-01-01 (-1 unknown)
    view, patent_id, key: lists of str
    multi-view mode (``args.multiview``) adds: image2 (B, 3, H, W): another view of the same patent,
    view2 (list of str), has_view2 (B,) long: 0 for a patent with a single drawing, whose image2 is then a
    second, independently augmented copy of the same drawing (documented fallback, not an error).

Exact resume (MosaicML streaming's idea, on shard groups): the loader's state is, per worker, (shard group,
position in the group, batches emitted, samples skipped) plus which worker yields next. A fresh loader given
that state skips whole groups already consumed without reading them, re-reads only the current group, and
continues with exactly the batches the uninterrupted run would have produced (same world size and worker
count). With another world size or worker count it starts each worker at the same fraction of the epoch and
logs that it did so.

open_clip's flags keep their meaning: ``--train-data`` (``::``-joined sources, brace patterns, local paths or
any fsspec URL), ``--train-num-samples``, ``--dataset-resampled``, ``--train-data-upsampling-factors``,
``--workers``, ``--batch-size``, ``--seed``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import posixpath
import random
from collections import deque
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from open_clip_train.data import DataInfo, SharedEpoch, expand_urls
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from patentclip.plugins import remote_io
from patentclip.plugins.classes import ClassTable
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess
from patentclip.plugins.image_transport import ERASE_SUFFIX, FINISH_KEY, TRANSPORTS, log_fallback
from patentclip.plugins.openclip_compat import group_by_keys_nothrow
from patentclip.plugins.registry import DATASETS, SAMPLERS
from patentclip.plugins.samplers import spread_repeats

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_EPOCH0 = _dt.date(1970, 1, 1)


def stable_index(n: int, *parts) -> int:
    """A deterministic index in [0, n) from the given parts (same on every machine and process)."""
    if n <= 1:
        return 0
    return stable_int(*parts) % n


def stable_int(*parts) -> int:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def grant_day(date: Optional[str]) -> int:
    """ISO date -> days since 1970-01-01; -1 when absent or unparsable."""
    if not date:
        return -1
    try:
        return (_dt.date.fromisoformat(str(date)[:10]) - _EPOCH0).days
    except ValueError:
        return -1


def _same_channels(vals: List[torch.Tensor]) -> List[torch.Tensor]:
    """One-channel (grey) images expanded to three where a batch mixes them with colour ones."""
    if all(v.shape == vals[0].shape for v in vals) or any(v.ndim != 3 for v in vals):
        return vals
    if {v.shape[0] for v in vals} == {1, 3} and len({v.shape[1:] for v in vals}) == 1:
        return [v.expand(3, -1, -1) for v in vals]
    return vals  # torch.stack says what differs


def collate_patent_batch(samples: List[Dict]) -> Dict:
    """Stack tensors, turn ints into a long tensor, keep strings as lists."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if torch.is_tensor(vals[0]):
            out[k] = torch.stack(_same_channels(vals))
        elif isinstance(vals[0], (int, bool)):
            out[k] = torch.tensor(vals, dtype=torch.long)
        else:
            out[k] = vals
    return out


def dataset_size(shards: str):
    """(number of samples, number of shards) from the sizes.json beside each source's shards (any fsspec URL);
    (None, n) when a source has none."""
    urls, _ = expand_urls(shards)
    total = 0
    cache: Dict[str, Dict] = {}
    for u in urls:
        d = posixpath.dirname(u)
        if d not in cache:
            try:
                cache[d] = json.loads(remote_io.read_text(posixpath.join(d, "sizes.json")))
            except (FileNotFoundError, OSError, ValueError):
                cache[d] = None
        if cache[d] is None or posixpath.basename(u) not in cache[d]:
            return None, len(urls)
        total += int(cache[d][posixpath.basename(u)])
    return total, len(urls)


class SkipCounter:
    """Counts (and logs) what the pipeline skips: corrupt tar members, undecodable images, bad samples."""

    def __init__(self):
        self.count = 0
        self.reasons: Dict[str, int] = {}

    def __call__(self, exn: BaseException, where: str = "") -> bool:
        self.count += 1
        reason = type(exn).__name__
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        logging.warning("skipped %s: %s: %s", where or "a sample", reason, exn)
        return True


def _tar_samples(url: str, skips: SkipCounter) -> Iterator[Dict]:
    """The samples (raw bytes per extension) of one shard; read errors after retries are raised, a corrupt
    member or a truncated shard is skipped and counted."""
    from webdataset.tariterators import tar_file_iterator

    stream = remote_io.open_shard(url)
    try:
        def handler(exn):
            if isinstance(exn, remote_io.ShardReadError):
                raise exn
            return skips(exn, f"member of {url}")

        files = ({**f, "__url__": url} for f in tar_file_iterator(stream, handler=handler))
        yield from group_by_keys_nothrow(files)
    finally:
        try:
            stream.close()
        except Exception:
            pass


def _decode_json(sample: Dict) -> Dict:
    raw = sample.get("json")
    if isinstance(raw, (bytes, bytearray)):
        return json.loads(raw.decode("utf-8"))
    return raw or {}


def _patent_of(key: str, meta: Dict) -> str:
    return str(meta.get("patent_id") or key.rsplit("_", 1)[0])


class PatentStream(IterableDataset):
    """The per-worker patent stream (see the module docstring). Yields batch dicts with a ``_pos`` entry."""

    def __init__(self, urls: Sequence[str], *, is_train: bool, batch_size: int, seed: int, rank: int,
                 world_size: int, shared_epoch: SharedEpoch, class_table: ClassTable, preprocess: Callable,
                 tokenizer: Callable, sampler=None, multiview: bool = False, random_caption: bool = True,
                 group_shards: int = 4, num_worker_batches: Optional[int] = None, resampled: bool = False,
                 weights: Optional[Sequence[float]] = None, resume: Optional[Dict] = None,
                 image_transport: str = "uint8"):
        super().__init__()
        self.urls = list(urls)
        self.is_train = is_train
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shared_epoch = shared_epoch
        self.class_table = class_table
        if image_transport not in TRANSPORTS:
            raise ValueError(f"unknown image transport {image_transport!r}; choose one of {', '.join(TRANSPORTS)}")
        # grey drawings on one channel, and (uint8 transport) normalised on the device: the same tensors
        self.preprocess = GreyAwarePreprocess(preprocess, uint8=image_transport == "uint8")
        if image_transport == "uint8" and self.preprocess.finish is None:
            log_fallback(self.preprocess.uint8_refused)
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.multiview = multiview
        self.random_caption = random_caption and is_train
        self.group_shards = max(1, group_shards) if is_train else 1
        self.num_worker_batches = num_worker_batches
        self.resampled = resampled
        self.weights = list(weights) if weights is not None else None
        self.resume = resume  # {"epoch", "workers": {wid: {...}}, "fraction": optional}

    # -- shard assignment ------------------------------------------------------------------------------
    def worker_groups(self, epoch: int, worker: int, num_workers: int) -> Iterator[List[str]]:
        """This rank's and worker's shard groups for the epoch, in order.

        Training workers that have a batch quota (every rank must take the same number of steps) go on with
        another pass over their shards, reshuffled with (seed, epoch, pass), when the first pass runs out
        before the quota: open_clip's "roll over and repeat a few samples". The caller stops at the quota.
        """
        if self.resampled:
            rng = random.Random(stable_int("resample", self.seed, epoch, self.rank, worker))
            while True:
                if self.weights is None:
                    yield [rng.choice(self.urls) for _ in range(self.group_shards)]
                else:
                    yield rng.choices(self.urls, weights=self.weights, k=self.group_shards)
        urls = list(self.urls)
        if self.is_train:
            random.Random(stable_int("shards", self.seed, epoch)).shuffle(urls)
            urls = urls[self.rank::self.world_size]
        mine = urls[worker::num_workers]
        repeat = self.is_train and self.num_worker_batches is not None
        p = 0
        while mine:
            order = list(mine)
            if p > 0:
                random.Random(stable_int("pass", self.seed, epoch, self.rank, worker, p)).shuffle(order)
            for i in range(0, len(order), self.group_shards):
                yield order[i:i + self.group_shards]
            if not repeat:
                return
            p += 1

    def groups_of_worker(self, epoch: int, worker: int, num_workers: int) -> Optional[int]:
        """Number of shard groups in this worker's first pass (None when resampling)."""
        if self.resampled:
            return None
        urls = list(self.urls)
        if self.is_train:
            urls = urls[self.rank::self.world_size]
        return math.ceil(len(urls[worker::num_workers]) / self.group_shards)

    # -- examples ---------------------------------------------------------------------------------------
    @staticmethod
    def read_group(group: List[str], skips: SkipCounter) -> List[Dict]:
        """The raw samples of a shard group, in shard order (I/O only: runs in the prefetch thread)."""
        samples: List[Dict] = []
        for url in group:
            samples.extend(_tar_samples(url, skips))
        return samples

    def group_examples(self, group: List[str], epoch: int, gidx: int, skips: SkipCounter,
                       samples: Optional[List[Dict]] = None) -> List[Dict]:
        """All examples of one shard group, after pairing, sampling and the group shuffle."""
        if samples is None:
            samples = self.read_group(group, skips)
        # patents: runs of adjacent samples with the same patent id
        examples: List[Dict] = []
        run: List[Dict] = []

        def flush():
            for s in run:
                others = [o for o in run if o is not s]
                ex = {"anchor": s}
                if self.multiview:
                    ex["other"] = others[stable_index(len(others), "view", self.seed, epoch, s["__key__"])] \
                        if others else None
                examples.append(ex)

        for s in samples:
            meta = _decode_json(s)
            s["__meta__"] = meta
            pid = _patent_of(s["__key__"], meta)
            if run and _patent_of(run[0]["__key__"], run[0]["__meta__"]) != pid:
                flush()
                run = []
            run.append(s)
        if run:
            flush()
        if self.is_train:
            expanded = []
            for ex in examples:
                s = ex["anchor"]
                try:
                    cid = self.class_id(s)
                except ValueError:
                    raise
                m = self.sampler.multiplicity(self.seed, epoch, s["__key__"], cid) if self.sampler else 1
                expanded.extend({**ex, "copy": c} for c in range(m))
            examples = expanded
            perm = list(range(len(examples)))
            # seeded by the shard's file name, not its URL: the same shards on local disk or in S3 give the same run
            first = posixpath.basename(group[0]) if group else ""
            random.Random(stable_int("group", self.seed, epoch, gidx, first)).shuffle(perm)
            # a drawing's repeats (class-aware sampler) at least a batch apart: never two copies in one batch
            examples = spread_repeats([examples[i] for i in perm], lambda ex: ex["anchor"]["__key__"],
                                      self.batch_size)
        return examples

    def class_id(self, s: Dict) -> int:
        where = f"sample {s['__key__']!r} of {s.get('__url__', '?')}"
        meta = s["__meta__"]
        if "cls" in s:
            raw = s["cls"]
            cid = int(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)
        elif "class_id" in meta:
            cid = int(meta["class_id"])
        else:
            raise ValueError(f"{where} has no class id (cls or json class_id)")
        return self.class_table.check_id(cid, where)

    def _image(self, s: Dict, salt: str, epoch: int, copy: int):
        for ext in IMAGE_EXTS:
            if ext in s:
                raw = s[ext]
                break
        else:
            raise ValueError(f"sample {s['__key__']!r} of {s.get('__url__', '?')} has no image (png/jpg/jpeg/webp)")
        img = Image.open(io.BytesIO(raw))
        img.load()
        if not self.is_train:
            return self.preprocess(img)
        # seed torch's CPU generator (what torchvision's random transforms use) and Python's `random` (what
        # open_clip's colour jitter / grey-scale augmentations use) for this example, and restore both after:
        # direct generator calls, as torch.random.fork_rng + torch.manual_seed cost ~2 ms per sample
        gen = torch.default_generator
        saved, saved_py = gen.get_state(), random.getstate()
        aug_seed = stable_int("aug", salt, self.seed, epoch, s["__key__"], copy) & ((1 << 63) - 1)
        gen.manual_seed(aug_seed)
        random.seed(aug_seed)
        try:
            return self.preprocess(img)
        finally:
            gen.set_state(saved)
            random.setstate(saved_py)

    def make_example(self, ex: Dict, epoch: int) -> Dict:
        s = ex["anchor"]
        meta = s["__meta__"]
        key = s["__key__"]
        copy = ex.get("copy", 0)
        captions = [c for c in (meta.get("captions") or []) if c]
        if not captions and s.get("txt"):
            txt = s["txt"]
            captions = [txt.decode("utf-8") if isinstance(txt, (bytes, bytearray)) else str(txt)]
        if not captions:
            raise ValueError(f"sample {key!r} of {s.get('__url__', '?')} has no caption (txt or json captions)")
        caption = captions[stable_index(len(captions), "caption", self.seed, epoch, key, copy)] \
            if self.random_caption else captions[0]
        erasing = self.preprocess.erasing > 0
        out = {
            "image": self._image(s, "anchor", epoch, copy),
            "text": self.tokenizer([caption])[0],
            "class_id": self.class_id(s),
            "grant_day": grant_day(meta.get("grant_date")),
            "view": str(meta.get("view", "")),
            "patent_id": _patent_of(key, meta),
            "key": key,
        }
        if erasing:  # the random-erasing boxes drawn here, painted on the device
            out["image" + ERASE_SUFFIX] = self.preprocess.last_erase()
        if self.multiview:
            other = ex.get("other")
            if other is not None:
                out["image2"] = self._image(other, "other", epoch, copy)
                out["view2"] = str(other["__meta__"].get("view", ""))
                out["has_view2"] = 1
            else:
                out["image2"] = self._image(s, "self-pair", epoch, copy)
                out["view2"] = out["view"]
                out["has_view2"] = 0
            if erasing:
                out["image2" + ERASE_SUFFIX] = self.preprocess.last_erase()
        return out

    # -- iteration ----------------------------------------------------------------------------------------
    def start_state(self, epoch: int, worker: int, num_workers: int) -> Dict:
        fresh = {"group": 0, "offset": 0, "batches": 0, "skipped": 0}
        r = self.resume
        if not r or int(r.get("epoch", -1)) != epoch:
            return fresh
        if r.get("exact"):
            return {**fresh, **r["workers"].get(str(worker), r["workers"].get(worker, fresh))}
        # another world size / worker count: the same fraction of the epoch
        frac = float(r["fraction"])
        n_groups = self.groups_of_worker(epoch, worker, num_workers)
        return {**fresh, "group": int(frac * n_groups) if n_groups is not None else 0,
                "batches": int(frac * (self.num_worker_batches or 0))}

    def _prefetched_groups(self, epoch: int, worker: int, num_workers: int, first: int, skips: SkipCounter):
        """(index, shards, raw samples) of the groups from ``first`` on; the next group is read by a background
        thread while the current one is decoded, so a worker does not stall at group boundaries (S3 latency).
        Groups before ``first`` (consumed before a resume) are not read at all."""
        from concurrent.futures import ThreadPoolExecutor

        groups = ((g, grp) for g, grp in enumerate(self.worker_groups(epoch, worker, num_workers)) if g >= first)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patentclip-prefetch")
        try:
            nxt = next(groups, None)
            pending = pool.submit(self.read_group, nxt[1], skips) if nxt else None
            while nxt is not None:
                gidx, group = nxt
                raw = pending.result()
                nxt = next(groups, None)
                pending = pool.submit(self.read_group, nxt[1], skips) if nxt else None
                yield gidx, group, raw
        finally:
            # at the batch quota the prefetched group is not needed: do not wait for it
            pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.shared_epoch.get_value()
        state = self.start_state(epoch, worker, num_workers)
        skips = SkipCounter()
        skips.count = int(state.get("skipped", 0))
        batches = int(state["batches"])
        limit = self.num_worker_batches
        pending: List[Dict] = []
        pos = {"group": int(state["group"]), "offset": int(state["offset"])}

        def emit():
            nonlocal batches, pending
            batch = collate_patent_batch(pending)
            pending = []
            batches += 1
            batch["_pos"] = {"worker": worker, "epoch": epoch, "group": pos["group"], "offset": pos["offset"],
                             "batches": batches, "skipped": skips.count}
            return batch

        if limit is None or batches < limit:
            for gidx, group, raw in self._prefetched_groups(epoch, worker, num_workers, pos["group"], skips):
                examples = self.group_examples(group, epoch, gidx, skips, samples=raw)
                start = pos["offset"] if gidx == pos["group"] else 0
                for j in range(start, len(examples)):
                    try:
                        item = self.make_example(examples[j], epoch)
                    except ValueError as exc:
                        if "unknown class id" in str(exc) or "has no class id" in str(exc):
                            raise
                        skips(exc, f"sample {examples[j]['anchor']['__key__']!r}")
                        item = None
                    except (OSError, SyntaxError) as exc:  # undecodable image
                        skips(exc, f"image of {examples[j]['anchor']['__key__']!r} in {examples[j]['anchor'].get('__url__')}")
                        item = None
                    pos["group"], pos["offset"] = gidx, j + 1
                    if item is None:
                        continue
                    pending.append(item)
                    if len(pending) == self.batch_size:
                        yield emit()
                        if limit is not None and batches >= limit:
                            break
                if limit is not None and batches >= limit:
                    break
                pos["group"], pos["offset"] = gidx + 1, 0
            if pending and not self.is_train:
                yield emit()
        yield {"_end": worker, "_pos": {"worker": worker, "epoch": epoch, "batches": batches,
                                        "skipped": skips.count, "group": pos["group"], "offset": pos["offset"]}}


class PatentLoader:
    """A DataLoader over :class:`PatentStream` with a fixed round-robin order over workers and a resumable
    position (``state_dict`` / ``load_state_dict``).

    The order is round-robin over the workers, skipping finished ones, independent of which worker's batch
    the DataLoader happens to deliver first; ``state_dict()`` describes the batches handed out so far (not the
    ones prefetched), so a loader built from it continues exactly.
    """

    def __init__(self, dataset: PatentStream, num_workers: int, num_batches: int, num_samples: int):
        self.dataset = dataset
        self.num_workers = num_workers
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.dataloader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                     persistent_workers=False)
        self._state = None
        self.skipped = 0

    def _fresh_state(self, epoch: int) -> Dict:
        return {"epoch": epoch, "next_worker": 0, "batches": 0, "workers": {},
                "finished": [], "world_size": self.dataset.world_size, "num_workers": max(1, self.num_workers),
                "batch_size": self.dataset.batch_size, "seed": self.dataset.seed, "num_batches": self.num_batches,
                "exact": True}

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        epoch = self.dataset.shared_epoch.get_value()
        r = self.dataset.resume
        if r and int(r.get("epoch", -1)) == epoch and r.get("exact"):
            state = json.loads(json.dumps(r))
        else:
            state = self._fresh_state(epoch)
        self._state = state
        nw = max(1, self.num_workers)
        finished = set(int(w) for w in state.get("finished", []))
        queues: Dict[int, deque] = {w: deque() for w in range(nw)}
        order = deque(w for w in list(range(state["next_worker"], nw)) + list(range(0, state["next_worker"]))
                      if w not in finished)
        it = iter(self.dataloader)
        while order:
            want = order[0]
            while not queues[want]:
                item = next(it)
                queues[item["_pos"]["worker"]].append(item)
            item = queues[want].popleft()
            pos = item.pop("_pos")
            state["workers"][str(want)] = {k: pos[k] for k in ("group", "offset", "batches", "skipped")}
            self.skipped = sum(int(w.get("skipped", 0)) for w in state["workers"].values())
            order.popleft()
            if "_end" in item:
                state["finished"] = sorted(set(state.get("finished", [])) | {want})
                state["next_worker"] = order[0] if order else 0
                continue
            order.append(want)
            state["next_worker"] = order[0]
            state["batches"] += 1
            if self.dataset.preprocess.finish is not None:
                item[FINISH_KEY] = self.dataset.preprocess.finish
            yield item
        for _ in it:  # drain (all workers have finished)
            pass
        self.dataset.resume = None

    def state_dict(self) -> Dict:
        """Position after the batches handed out so far in the current epoch."""
        if self._state is None:
            return self._fresh_state(self.dataset.shared_epoch.get_value())
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: Optional[Dict]) -> None:
        """Continue from ``state`` in its epoch. Exact with the same world size, workers, batch size and seed;
        otherwise from the same fraction of the epoch (logged)."""
        if not state:
            self.dataset.resume = None
            return
        same = (int(state.get("world_size", -1)) == self.dataset.world_size
                and int(state.get("num_workers", -1)) == max(1, self.num_workers)
                and int(state.get("batch_size", -1)) == self.dataset.batch_size
                and int(state.get("seed", -1)) == self.dataset.seed)
        if same:
            self.dataset.resume = {**state, "exact": True}
            return
        frac = min(1.0, float(state.get("batches", 0)) / max(1, int(state.get("num_batches", 0) or 1)))
        logging.warning(
            "data loader state was saved with world size %s, %s workers, batch size %s, seed %s; now %s, %s, %s, "
            "%s: resuming epoch %s at the same fraction (%.1f%%), not sample-exact",
            state.get("world_size"), state.get("num_workers"), state.get("batch_size"), state.get("seed"),
            self.dataset.world_size, max(1, self.num_workers), self.dataset.batch_size, self.dataset.seed,
            state.get("epoch"), 100 * frac)
        self.dataset.resume = {"epoch": int(state["epoch"]), "exact": False, "fraction": frac}


@DATASETS.register("patent-wds")
def build_patent_dataset(args, preprocess_img, is_train: bool, epoch: int = 0, tokenizer=None,
                         class_table: Optional[ClassTable] = None, floor: bool = False) -> DataInfo:
    """The patent pipeline for ``args.train_data`` (is_train) or ``args.val_data``; returns open_clip's DataInfo
    whose ``dataloader`` is a :class:`PatentLoader` (``num_batches``, ``num_samples``, ``state_dict()``)."""
    remote_io.register_fsspec_gopen()
    input_shards = args.train_data if is_train else args.val_data
    if not input_shards:
        raise ValueError("no shards given (--train-data / --val-data)")
    if class_table is None:
        raise ValueError("the patent pipeline needs the class table (classes.json)")
    resampled = bool(getattr(args, "dataset_resampled", False)) and is_train
    weights = getattr(args, "train_data_upsampling_factors", None) if is_train else None
    if weights is not None and not resampled:
        raise ValueError("--train-data-upsampling-factors needs --dataset-resampled (as in open_clip)")
    urls, url_weights = expand_urls(input_shards, weights)
    shared_epoch = SharedEpoch(epoch=epoch)
    workers = int(getattr(args, "workers", 0) or 0)
    world_size = int(getattr(args, "world_size", 1)) if is_train else 1
    rank = int(getattr(args, "rank", 0)) if is_train else 0

    if is_train:
        if args.train_num_samples is not None:
            num_samples = args.train_num_samples
        else:
            num_samples, _ = dataset_size(input_shards)
            if not num_samples:
                raise RuntimeError(f"cannot tell the number of training samples of {input_shards}: no sizes.json "
                                   f"beside the shards; pass --train-num-samples")
        if not resampled and len(urls) < max(1, workers) * world_size:
            raise ValueError(
                f"{len(urls)} training shards cannot feed {max(1, workers)} data-loader workers on {world_size} "
                f"ranks: build more shards (smaller --samples-per-shard) or use fewer --workers")
        round_fn = math.floor if floor else math.ceil
        global_batch_size = args.batch_size * world_size
        num_batches = round_fn(num_samples / global_batch_size)
        num_worker_batches = round_fn(num_batches / max(1, workers))
        num_batches = num_worker_batches * max(1, workers)
        num_samples = num_batches * global_batch_size
    else:
        num_samples = getattr(args, "val_num_samples", None) or dataset_size(input_shards)[0] or 0
        num_batches = math.ceil(num_samples / args.batch_size) if num_samples else 0
        num_worker_batches = None

    sampler = SAMPLERS.build(getattr(args, "sampler", "natural"), args, class_table) if is_train else None
    dataset = PatentStream(
        urls, is_train=is_train, batch_size=args.batch_size, seed=int(getattr(args, "seed", 0)), rank=rank,
        world_size=world_size, shared_epoch=shared_epoch, class_table=class_table, preprocess=preprocess_img,
        tokenizer=tokenizer, sampler=sampler, multiview=bool(getattr(args, "multiview", False)) and is_train,
        random_caption=getattr(args, "caption_choice", "random") == "random",
        group_shards=int(getattr(args, "shuffle_group_shards", 4) or 4), num_worker_batches=num_worker_batches,
        resampled=resampled, weights=url_weights, image_transport=getattr(args, "image_transport", "uint8"))
    loader = PatentLoader(dataset, workers, num_batches, num_samples)
    logging.debug("patent-wds %s: %d samples, %d batches", "train" if is_train else "val", num_samples, num_batches)
    return DataInfo(dataloader=loader, shared_epoch=shared_epoch)
