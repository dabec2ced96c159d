"""The patent loader: the workers' batches in a fixed order, a resumable position, and the image transport.

:class:`PatentLoader` wraps a torch ``DataLoader`` over :class:`~patentclip.plugins.data.stream.PatentStream`:

* **Order**: round-robin over the workers, skipping finished ones, independent of which worker's batch the
  ``DataLoader`` happens to deliver first.
* **Resume** (MosaicML streaming's idea, on shard groups): ``state_dict()`` describes the batches handed out so
  far (not the ones prefetched): per worker its cursor (shard group, offset in the group, batches, skipped),
  which worker yields next and which have finished. A loader given that state (``load_state_dict``) continues
  with exactly the batches the uninterrupted one would have produced, with the same world size, worker count,
  batch size and seed; with another it starts each worker at the same fraction of the epoch and logs that it
  does so.
* **Device-side finishing** (as timm's ``PrefetchLoader`` owns normalisation): ``image_transport`` is the
  decision, made once when the loader is built, of what the workers send (uint8 pixels or float tensors) and how
  the consumer finishes it on its device (plugins/image_transport.py). The training step and evaluation's
  feature extraction call it on the image fields (``image_transport.images(batch, field, device, dtype)``);
  nothing of it travels in the batch.
* **Persistent workers**: with ``num_workers > 0`` the workers are started once and kept across epochs (torch's
  ``persistent_workers``): an epoch does not pay for new processes, new S3 sessions and a fresh import of the
  decoders. The workers read the epoch from the shared epoch value and the resume state from their copy of the
  dataset, which is made when they start; so the loader starts new workers exactly when the resume state the
  workers would apply to the coming epoch differs from the one the loader wants applied (after
  ``load_state_dict`` for that epoch, or when a stale one would be misread), and keeps them otherwise. A kept
  worker reads its next epoch's first shard group while it finishes the current epoch (plugins/data/read_ahead.py).
"""
from __future__ import annotations

import json
import logging
from collections import deque
from typing import Dict, Iterator, Optional

from torch.utils.data import DataLoader

from patentclip.plugins.data.batch import PatentBatch
from patentclip.plugins.data.stream import END, POSITION, PatentStream
from patentclip.plugins.image_transport import ImageTransport

CURSOR_KEYS = ("group", "offset", "batches", "skipped")


class PatentLoader:
    """A DataLoader over :class:`PatentStream` with a fixed round-robin order over workers, a resumable position
    (``state_dict`` / ``load_state_dict``) and the image transport of its batches (module docstring)."""

    def __init__(self, dataset: PatentStream, num_workers: int, num_batches: int, num_samples: int,
                 persistent_workers: bool = True):
        self.dataset = dataset
        self.num_workers = num_workers
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        # a persistent worker reads its next epoch's first shard group while it finishes the epoch (read_ahead.py)
        dataset.read_ahead_next_epoch = self.persistent_workers
        self._dataloader: Optional[DataLoader] = None
        self._forked_resume: Optional[Dict] = None  # the dataset's resume state when the workers were started
        self._state = None
        self.skipped = 0

    @staticmethod
    def _applies(resume: Optional[Dict], epoch: int) -> Optional[Dict]:
        """The resume state a stream applies to ``epoch`` (PatentStream.start): one saved in that epoch."""
        return resume if resume and int(resume.get("epoch", -1)) == epoch else None

    @property
    def dataloader(self) -> DataLoader:
        """The torch DataLoader for the coming epoch; new workers only when the resume state they would apply
        differs from the wanted one (module docstring)."""
        epoch = self.dataset.shared_epoch.get_value()
        wanted = self._applies(self.dataset.resume, epoch)
        if self._dataloader is not None and self.persistent_workers \
                and self._applies(self._forked_resume, epoch) != wanted:
            self.close()
        if self._dataloader is None:
            self._dataloader = DataLoader(self.dataset, batch_size=None, shuffle=False,
                                          num_workers=self.num_workers, persistent_workers=self.persistent_workers)
            self._forked_resume = json.loads(json.dumps(self.dataset.resume)) if self.dataset.resume else None
        return self._dataloader

    def close(self) -> None:
        """Let the persistent workers go (torch stops them when their DataLoader is released); a later epoch
        starts new ones."""
        self._dataloader = None
        self._forked_resume = None

    @property
    def image_transport(self) -> ImageTransport:
        """What the batches' image fields hold and how to finish them on a device."""
        return self.dataset.image_transport

    def _fresh_state(self, epoch: int) -> Dict:
        return {"epoch": epoch, "next_worker": 0, "batches": 0, "workers": {},
                "finished": [], "world_size": self.dataset.world_size, "num_workers": max(1, self.num_workers),
                "batch_size": self.dataset.batch_size, "seed": self.dataset.seed, "num_batches": self.num_batches,
                "exact": True}

    def __len__(self):
        return self.num_batches

    def __iter__(self) -> Iterator[PatentBatch]:
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
                queues[item[POSITION]["worker"]].append(item)
            item = queues[want].popleft()
            pos = item.pop(POSITION)
            state["workers"][str(want)] = {k: pos[k] for k in CURSOR_KEYS}
            self.skipped = sum(int(w.get("skipped", 0)) for w in state["workers"].values())
            order.popleft()
            if END in item:
                state["finished"] = sorted(set(state.get("finished", [])) | {want})
                state["next_worker"] = order[0] if order else 0
                continue
            order.append(want)
            state["next_worker"] = order[0]
            state["batches"] += 1
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
