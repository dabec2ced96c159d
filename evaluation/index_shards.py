"""Reading a shard set for the prior-art index: the shards' drawings in batches with where each image lies in its
tar (member, offset, size), the drawings and shards left out as :class:`IndexProblem` records, and the class table
and sizes.json found beside the shards."""
from __future__ import annotations

import contextlib
import json
import posixpath
import tarfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from torch.utils.data import IterableDataset, get_worker_info

from patentclip.plugins import remote_io
from patentclip.plugins.classes import ClassTable
from patentclip.plugins.data import batch as B
from patentclip.plugins.data import tars
from patentclip.plugins.data.batch import collate_patent_batch
from patentclip.plugins.data.stream import PatentStream, made
from patentclip.shards import sample_format as SF

COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst")


@dataclass(frozen=True)
class IndexProblem:
    """A drawing or shard the index leaves out, and why."""

    shard: str
    kind: str                 # "corrupt_tar", "truncated_shard", "bad_sample"
    reason: str
    key: Optional[str] = None

    def to_dict(self) -> Dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_shard(url: str) -> Tuple[List[Dict], List[IndexProblem]]:
    """The samples of one shard as the pipeline's tar reader groups them (``{"__key__", "__url__", ext: bytes}``),
    each with ``"__members__"``: ``{ext: (member name, data offset, size)}`` in the uncompressed tar. A corrupt or
    truncated tar keeps the samples before the damage and reports it; a shard that cannot be read at all after the
    I/O retries raises ``remote_io.ShardReadError`` / ``FileNotFoundError``."""
    from webdataset.tariterators import base_plus_ext, valid_sample

    samples: List[Dict] = []
    problems: List[IndexProblem] = []
    compressed = url.lower().endswith(COMPRESSED)
    stream = remote_io.open_shard(url)
    cur: Optional[Dict] = None
    members = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                prefix, suffix = base_plus_ext(m.name)
                if prefix is None:
                    continue
                suffix = suffix.lower()
                data = tar.extractfile(m).read()
                members += 1
                if cur is None or prefix != cur["__key__"] or suffix in cur:
                    if valid_sample(cur):
                        samples.append(cur)
                    cur = {"__key__": prefix, "__url__": url, "__members__": {}}
                cur[suffix] = data
                cur["__members__"][suffix] = (m.name, -1 if compressed else int(m.offset_data), int(m.size))
    except remote_io.ShardReadError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        problems.append(IndexProblem(url, "corrupt_tar", f"{url}: tar stream broken after {members} members "
                                     f"({type(exc).__name__}: {exc}); the {len(samples)} complete samples before it "
                                     f"are indexed, the rest of the shard is not"))
        cur = None  # the sample being read when the stream broke may be incomplete
    finally:
        with contextlib.suppress(Exception):
            stream.close()
    if valid_sample(cur):
        samples.append(cur)
    return samples, problems


class _ProblemRecorder(tars.SkipCounter):
    """The pipeline's skip counter, keeping each skipped sample as an :class:`IndexProblem` of its shard."""

    def __init__(self, url: str, problems: List[IndexProblem]):
        super().__init__()
        self.url = url
        self.problems = problems

    def __call__(self, exn: BaseException, where: str = "") -> bool:
        self.problems.append(IndexProblem(self.url, "bad_sample", f"{where}: {type(exn).__name__}: {exn}"))
        return super().__call__(exn, where)


class ShardBatches(IterableDataset):
    """This process's shards, each as batches of preprocessed drawings that never span two shards; the last batch
    of a shard carries ``last=True`` and the shard's problems. In a DataLoader, worker w takes shards w, w + W, ...

    Examples are made by the ``patent-wds`` pipeline's own stages (plugins/data: patents, the example maker with
    its class ids, captions, grey one-channel path and image transport, the skip rules), in evaluation mode, so a
    drawing gets exactly the pixels ``patentclip-eval`` feeds the model."""

    def __init__(self, urls: Sequence[str], stream: PatentStream, batch_size: int,
                 sizes: Optional[Dict[str, Optional[int]]] = None):
        self.urls = list(urls)
        self.stream = stream
        self.batch_size = int(batch_size)
        self.sizes = sizes or {}

    def __iter__(self):
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for url in self.urls[w::nw]:
            yield from self.shard_batches(url)

    def shard_batches(self, url: str):
        try:
            samples, problems = read_shard(url)
        except (remote_io.ShardReadError, OSError) as exc:
            yield {"shard": url, "error": f"{type(exc).__name__}: {exc}", "last": True}
            return
        expected = self.sizes.get(url)
        if expected is not None and len(samples) < expected and not problems:
            # a tar cut at a member boundary reads as a shorter, intact tar: only sizes.json tells
            problems.append(IndexProblem(url, "truncated_shard", f"{url}: {len(samples)} samples read, its sizes.json "
                                         f"lists {expected}: the shard was cut short; the samples read are indexed"))
        examples = self.stream.group_examples(0, [url], samples, 0)
        items = made(((0, j + 1, ex) for j, ex in enumerate(examples)), lambda ex: self.stream.make(ex, 0),
                     _ProblemRecorder(url, problems))
        batch: List[Dict] = []
        extra: List[Dict] = []

        def emit(last: bool) -> Dict:
            out = {"shard": url, "batch": collate_patent_batch(batch) if batch else None, "extra": list(extra),
                   "last": last, "problems": [p.to_dict() for p in problems] if last else []}
            batch.clear()
            extra.clear()
            return out

        for _, offset, item in items:
            if item is None:  # skipped (recorded)
                continue
            s = examples[offset - 1].anchor
            item.pop(B.TEXT, None)  # the captions are not embedded
            name, off, size = s["__members__"][SF.image_ext_of(s)]
            extra.append({"title": str(s["__meta__"].get(SF.TITLE) or ""), "member": name, "offset": off,
                          "size": size, "side": max(s["__meta__"].get(SF.SIZE) or [0])})
            batch.append(item)
            if len(batch) == self.batch_size:
                yield emit(False)
        yield emit(True)


def shard_classes(urls: Sequence[str], classes_json: Optional[str]) -> List[Dict]:
    """The class table of the shards: ``classes_json``, or the classes.json beside them (one per source folder;
    they must agree by id and code)."""
    if classes_json:
        tables = {classes_json: ClassTable.load(classes_json)}
    else:
        folders = sorted({posixpath.dirname(u) for u in urls})
        tables = {f: ClassTable.load(posixpath.join(f, "classes.json")) for f in folders}
    ref_src, ref = next(iter(tables.items()))
    for src, t in tables.items():
        check_same_classes(ref.codes, t.codes, ref_src, src)
    return [{"id": c.id, "code": c.code, "name": c.name, "count": c.count} for c in ref.classes]


def check_same_classes(codes_a: Sequence[str], codes_b: Sequence[str], where_a: str, where_b: str) -> None:
    if list(codes_a) != list(codes_b):
        diff = [i for i in range(max(len(codes_a), len(codes_b)))
                if (codes_a[i] if i < len(codes_a) else None) != (codes_b[i] if i < len(codes_b) else None)]
        raise ValueError(f"the class tables of {where_a} ({len(codes_a)} classes) and {where_b} ({len(codes_b)} "
                         f"classes) differ (ids {diff[:10]}): class ids would mean different classes; rebuild the "
                         f"shards with one classes.json (patentclip-shards build --classes ...)")


def shard_sizes(urls: Sequence[str]) -> Dict[str, Optional[int]]:
    """Samples of each shard as the sizes.json beside it lists them (None where there is none)."""
    cache: Dict[str, Optional[Dict]] = {}
    out: Dict[str, Optional[int]] = {}
    for u in urls:
        d = posixpath.dirname(u)
        if d not in cache:
            try:
                cache[d] = json.loads(remote_io.read_text(posixpath.join(d, "sizes.json")))
            except (OSError, ValueError):
                cache[d] = None
        n = (cache[d] or {}).get(posixpath.basename(u))
        out[u] = int(n) if n is not None else None
    return out
