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

    def __init__(self, dataset: PatentStream, num_workers: int, num_batches: int, num_samples: int):
        self.dataset = dataset
        self.num_workers = num_workers
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.dataloader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                     persistent_workers=False)
        self._state = None
        self.skipped = 0

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
