"""The data pipeline's stages one by one (plugins/data/), the batch schema as the one home of field names, the
shard sample format as the one home of member names, and the package's shape (one concern per module)."""
import ast
import re
from pathlib import Path

import pytest
import torch

from patentclip.plugins.data import batch as B
from patentclip.plugins.data import patents
from patentclip.plugins.data.examples import Example
from patentclip.plugins.data.stream import Cursor, batched, made, positioned
from patentclip.plugins.data.tars import SkipCounter
from patentclip.shards import sample_format as SF

ROOT = Path(__file__).resolve().parents[1]


def sample(key, pid=None, cls=0):
    meta = {"captions": [f"caption of {key}"], "class_id": cls}
    if pid is not None:
        meta["patent_id"] = pid
    members = dict(SF.encode_members(key, "png", b"\x89PNG", {**meta, "captions": meta["captions"]}))
    s = {"__key__": key, "__url__": "mem://s.tar"}
    s.update({name.split(".", 1)[1]: data for name, data in members.items()})
    return s


# -- the shard sample format ------------------------------------------------------------------------------------

def test_sample_format_members_and_keys():
    meta = {"patent_id": "USD1", "class_id": 7, "captions": ["a chair", "seat"], "view": "front"}
    members = SF.encode_members(SF.sample_key("USD1", 3), "webp", b"img", meta)
    assert [n for n, _ in members] == ["USD1_03.cls", "USD1_03.json", "USD1_03.txt", "USD1_03.webp"]
    got = {n.split(".", 1)[1]: d for n, d in members}
    assert SF.decode_cls(got["cls"]) == 7 and SF.decode_txt(got["txt"]) == "a chair"
    assert SF.decode_json(got["json"]) == meta and SF.image_ext_of(got) == "webp"
    assert SF.KEY_RE.match("USD1_03") and not SF.KEY_RE.match("USD1") and SF.patent_of_key("US_D1_03") == "US_D1"
    with pytest.raises(ValueError, match="image member .gif"):
        SF.encode_members("k_00", "gif", b"", meta)


def test_member_names_and_meta_fields_live_in_sample_format():
    """The pipeline names members and json fields, the builder and inspect name members, through
    shards/sample_format.py (inspect's own summary records reuse some field names: not checked there)."""
    members = r"cls|txt|json|png|jpg|jpeg|webp"
    fields = r"patent_id|class_id|captions|view|grant_date|drawing_index|num_drawings|class_code"
    access = r"""\b(meta|s|sample|current|got|other)(\[|\.get\()\s*["']({})["']"""
    checks = [(ROOT / f"shards/{m}.py", members) for m in ("build", "build_plan", "shard_writer", "inspect")]
    checks += [(p, f"{members}|{fields}") for p in sorted((ROOT / "plugins/data").glob("*.py"))]
    for path, names in checks:
        literal = re.compile(access.format(names))
        hits = [line for line in path.read_text().splitlines() if literal.search(line)]
        assert not hits, (path.name, hits)
    assert '"txt"' not in (ROOT / "shards/shard_writer.py").read_text()


# -- the stages ---------------------------------------------------------------------------------------------------

def test_patents_are_runs_of_adjacent_samples():
    samples = [sample("a_00"), sample("a_01"), sample("x_00", pid="b"), sample("b_01"), sample("a_02")]
    runs = list(patents.patents(patents.with_meta(samples)))
    assert [[s["__key__"] for s in r] for r in runs] == [["a_00", "a_01"], ["x_00", "b_01"], ["a_02"]]


def test_pairs_are_other_drawings_of_the_patent_and_single_drawings_pair_with_none():
    runs = [[sample("a_00"), sample("a_01"), sample("a_02")], [sample("c_00")]]
    for r in runs:
        patents.with_meta(r)
        for s in r:
            s["__meta__"] = SF.decode_json(s["json"])
    exs = list(patents.pair_views(runs, multiview=True, seed=0, epoch=0))
    assert [e.anchor["__key__"] for e in exs] == ["a_00", "a_01", "a_02", "c_00"]
    assert all(e.other is not None and e.other is not e.anchor and e.other["__key__"][:2] == "a_" for e in exs[:3])
    assert exs[3].other is None
    again = list(patents.pair_views(runs, multiview=True, seed=0, epoch=0))
    assert [e.other["__key__"] for e in again[:3]] == [e.other["__key__"] for e in exs[:3]]
    assert all(e.other is None for e in patents.pair_views(runs, multiview=False, seed=0, epoch=0))


def test_sampler_repeats_are_numbered_and_kept_a_batch_apart():
    class Twice:
        def multiplicity(self, seed, epoch, key, class_id):
            return 0 if key == "drop_00" else 2

    exs = [Example({"__key__": k}) for k in ("a_00", "b_00", "drop_00", "c_00")]
    rep = list(patents.repeat_by_sampler(exs, sampler=Twice(), seed=0, epoch=0, class_id=lambda s: 0))
    assert [(e.anchor["__key__"], e.copy) for e in rep] == [("a_00", 0), ("a_00", 1), ("b_00", 0), ("b_00", 1),
                                                            ("c_00", 0), ("c_00", 1)]
    out = patents.shuffle_group(rep, seed=0, epoch=0, group_index=0, group=["s3://x/train-000000.tar"],
                                batch_size=3)
    keys = [e.anchor["__key__"] for e in out]
    assert sorted(keys) == sorted(e.anchor["__key__"] for e in rep)
    assert all(len(set(keys[i:i + 3])) == len(keys[i:i + 3]) for i in range(0, len(keys), 3))
    same_name = patents.shuffle_group(rep, seed=0, epoch=0, group_index=0, group=["/local/train-000000.tar"],
                                      batch_size=3)
    assert [e.anchor["__key__"] for e in same_name] == keys  # seeded by the shard's name, not its URL


def test_positions_batches_quota_and_skips():
    groups = [(0, ["g0"], list("abcde")), (1, ["g1"], list("fgh"))]
    of = lambda g, grp, raw: [Example({"__key__": x}) for x in raw]  # noqa: E731
    items = list(positioned(groups, of, Cursor(group=0, offset=2)))
    assert [(g, o, e and e.anchor["__key__"]) for g, o, e in items] == [
        (0, 3, "c"), (0, 4, "d"), (0, 5, "e"), (1, 0, None), (1, 1, "f"), (1, 2, "g"), (1, 3, "h"), (2, 0, None)]

    skips = SkipCounter()

    def make(ex):
        if ex.anchor["__key__"] == "d":
            raise ValueError("no caption")
        if ex.anchor["__key__"] == "g":
            raise OSError("truncated image")
        return {"k": ex.anchor["__key__"]}

    cursor = Cursor(group=0, offset=2)
    out = list(batched(made(iter(items), make, skips), cursor, batch_size=2, quota=None, keep_partial=True))
    assert [[x["k"] for x in b] for b in out] == [["c", "e"], ["f", "h"]] and skips.count == 2
    assert cursor == Cursor(group=2, offset=0, batches=2, skipped=0)  # skipped is the stream's to copy

    cursor = Cursor(group=0, offset=2)
    out = list(batched(made(iter(items), make, SkipCounter()), cursor, batch_size=2, quota=1, keep_partial=True))
    assert len(out) == 1 and cursor == Cursor(group=0, offset=5, batches=1)  # stops at the quota, position kept

    untouched = iter(items)
    assert list(batched(untouched, Cursor(batches=3), batch_size=2, quota=3, keep_partial=False)) == []
    assert next(untouched) == items[0]  # at the quota already: nothing read


def test_a_wrong_class_table_is_not_skipped():
    def make(ex):
        raise ValueError("unknown class id 9 in sample 'a_00': classes.json defines 5 classes")

    with pytest.raises(ValueError, match="unknown class id"):
        list(made([(0, 1, Example({"__key__": "a_00"}))], make, SkipCounter()))


# -- the batch schema ---------------------------------------------------------------------------------------------

def test_schema_fields():
    assert set(B.FIELDS) == {B.IMAGE, B.IMAGE_ERASE, B.TEXT, B.CLASS_ID, B.GRANT_DAY, B.VIEW, B.PATENT_ID, B.KEY,
                             *B.SECOND_VIEW_FIELDS}
    assert B.erase_field(B.IMAGE2) == B.IMAGE2_ERASE and set(B.IMAGE_FIELDS) <= set(B.FIELDS)
    b = B.collate_patent_batch([{B.IMAGE: torch.zeros(1, 2, 2), B.CLASS_ID: 3, B.KEY: "a_00"}] * 2)
    assert b[B.IMAGE].shape == (2, 1, 2, 2) and b[B.CLASS_ID].dtype == torch.long and b[B.KEY] == ["a_00"] * 2


def test_consumers_name_batch_fields_through_the_schema():
    """No string literal of a batch field indexes a batch in the product code (plugins, launch, evaluation, benchmarks)."""
    names = "|".join(re.escape(f) for f in B.FIELDS)
    literal = re.compile(rf"""\b(batch|b|micro|mb|u|f)\[\s*["']({names})["']\s*\]""")
    offenders = []
    for folder in ("plugins", "launch", "evaluation", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if literal.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- the package's shape ------------------------------------------------------------------------------------------

def test_every_stage_module_states_its_concern_and_is_small():
    for path in sorted((ROOT / "plugins/data").glob("*.py")) + [ROOT / "shards/sample_format.py",
                                                                ROOT / "plugins/seeding.py"]:
        src = path.read_text()
        doc = ast.get_docstring(ast.parse(src))
        assert doc and len(doc) > 80, path.name
        assert len(src.splitlines()) <= 400, path.name
