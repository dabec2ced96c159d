"""patentclip-caption's parts without models: instructions, prompts and seeds, parsing and cleaning, plan, worker
identity, part order, journal (torn lines), holding a part, the HTTP engine's pure helpers."""
import json
import os

import pytest

from patentclip.shards.captioning import instructions as ins
from patentclip.shards.captioning.engines.http import TokenBucket, estimate_tokens, retry_after_seconds
from patentclip.shards.captioning.parsing import REASONS, clean_description, clean_generated, split_items
from patentclip.shards.captioning.prompts import (DrawingTask, captioner_messages, drawing_tasks, llm_messages,
                                                  object_from_title, request_seed)
from patentclip.shards.captioning.work import PartStore, make_plan, part_order, worker_identity
from patentclip.shards.manifest import read_manifest


# ---- instructions -------------------------------------------------------------------------------------------------

def test_builtin_instructions_load_with_a_content_version():
    assert ins.builtin_names() == ["captioner-v1", "enrich-v1"]
    cap = ins.load_instruction(None, "captioner")
    llm = ins.load_instruction("enrich-v1", "llm")
    assert cap.id.startswith("captioner-v1@") and len(cap.id.split("@")[1]) == 8
    assert llm.stage == "llm" and len(llm.templates) >= 3 and "{synonym}" in " ".join(llm.templates)
    assert "shapes, contours, texture" in cap.user  # the LLM-informed paper's instruction
    other = llm.with_templates(("This is {object}.",))
    assert other.id != llm.id and other.templates == ("This is {object}.",)


def test_instruction_files_are_checked(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\nversion = "2"\nstage = "captioner"\nuser = "Describe {{ colour }} {{ view }}."\n')
    with pytest.raises(ValueError, match=r"names unknown field\(s\) \['colour'\]; known for the captioner stage: "
                                         r"object, a_object, view"):
        ins.load_instruction(str(f), "captioner")
    f.write_text('name = "mine"\nversion = "2"\nstage = "captioner"\nuser = "Describe the {{ view }} view."\n')
    a = ins.load_instruction(str(f), "captioner")
    assert a.id.startswith("mine-v2@") and a.render({"view": "top"}) == ("", "Describe the top view.")
    assert a.render({})[1] == "Describe the  view."  # an unknown field is empty
    f.write_text(f.read_text() + "# an edit\n")
    assert ins.load_instruction(str(f), "captioner").id != a.id  # the digest follows the bytes
    with pytest.raises(ValueError, match="is for the stage 'captioner', not 'llm'"):
        ins.load_instruction(str(f), "llm")
    with pytest.raises(ValueError, match=r"unknown instruction 'enrich-v9'.*captioner-v1, enrich-v1"):
        ins.load_instruction("enrich-v9", "llm")
    f.write_text('name = "x"\nversion = 1\nstage = "llm"\nuser = "{{ n }}"\n')
    with pytest.raises(ValueError, match="'templates'.*is required for the llm stage"):
        ins.load_instruction(str(f), "llm")
    f.write_text('name = "x"\nversion = 1\nstage = "llm"\ntemplates = ["a"]\nuser = "{% if n %}"\n')
    with pytest.raises(ValueError, match="'user' line 1"):
        ins.load_instruction(str(f), "llm")
    f.write_text('name = "x"\nversion = 1\nstage = "llm"\ntemplates = ["a"]\nuser = "x"\ncolour = 1\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        ins.load_instruction(str(f), "llm")


# ---- prompts ------------------------------------------------------------------------------------------------------

def test_object_from_title():
    assert object_from_title("Ornamental design for a cup") == "cup"
    assert object_from_title("Design of the egg cup.") == "egg cup"
    assert object_from_title("ornamental design for an electric toothbrush") == "electric toothbrush"
    assert object_from_title("Cup") is None and object_from_title(None) is None


def test_drawing_tasks_keys_are_the_shard_keys_and_prompts_use_the_fields(tmp_path):
    (tmp_path / "a").mkdir()
    for n in ("1.png", "2.png"):
        (tmp_path / "a" / n).write_bytes(b"x")
    rec = {"patent_id": "USD0000001", "grant_date": "2020-01-02", "class": "07-01", "class_name": "cups and mugs",
           "title": "Ornamental design for an egg cup",
           "drawings": [{"path": "a/1.png", "view": "front", "captions": ["c"]},
                        {"path": "a/2.png", "captions": ["c"], "caption": "FIG. 2 is a top view"}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(rec) + "\n")
    records, problems = read_manifest(tmp_path / "m.jsonl")
    tasks = drawing_tasks(records)
    assert [t.key for t in tasks] == ["USD0000001_00", "USD0000001_01"]
    t0, t1 = tasks
    assert t0.fields["object"] == "egg cup" and t0.fields["a_object"] == "an egg cup" and t0.fields["view"] == "front"
    assert "view" not in t1.fields and t1.fields["caption"] == "FIG. 2 is a top view"
    cap = ins.load_instruction(None, "captioner")
    msgs = captioner_messages(t0, cap, "IMG")
    assert msgs[0]["role"] == "system" and msgs[1]["content"][0] == {"type": "image", "image": "IMG"}
    assert msgs[1]["content"][1]["text"].startswith("This drawing from a design patent shows an egg cup in front "
                                                    "view; the patent is titled \"Ornamental design for an egg cup\"; "
                                                    "Locarno class 07-01, cups and mugs.")
    llm = ins.load_instruction(None, "llm")
    m = llm_messages(t1, llm, 20, "A round cup on a foot.", system_role=False)
    assert len(m) == 1 and m[0]["role"] == "user" and m[0]["content"].startswith(llm.render({})[0])
    text = m[0]["content"]
    assert "- the patent's figure description: FIG. 2 is a top view" in text and "- view:" not in text
    assert "- what the drawing shows: A round cup on a foot." in text and "numbered 1 to 20" in text


def test_request_seeds_are_a_pure_function():
    s = request_seed(0, "USD1_00", "llm", 0)
    assert s == request_seed(0, "USD1_00", "llm", 0) and 0 <= s < 2 ** 31
    assert len({request_seed(0, "USD1_00", "llm", a) for a in range(5)}) == 5
    assert s != request_seed(1, "USD1_00", "llm", 0) != request_seed(0, "USD1_00", "captioner", 0)


# ---- parsing and cleaning -----------------------------------------------------------------------------------------

def test_split_items():
    assert split_items('["a cup", " b "]') == ["a cup", "b"]
    text = ("Here are the captions:\n1. A cup.\n2) \"A mug.\"\n(3) A jug\n- Caption 4: A vase\n\u2022 A bowl\n\n"
            "* A pot")
    assert split_items(text) == ["Here are the captions:", "A cup.", "A mug.", "A jug", "A vase", "A bowl", "A pot"]


def test_clean_generated_counts_every_reason():
    answer = "\n".join([
        "Sure, here are 20 captions:",                               # off_format (preamble)
        "1. This is a drawing of a cup, classified as cups and mugs.",  # kept
        "2. This image features {details}.",                          # off_format (placeholder)
        "3. **A cup with a handle.**",                                # off_format (markdown)
        "4. A cup.",                                                   # too_short
        "5. " + " ".join(["word"] * 10 + [f"w{i}" for i in range(60)]),  # over_long
        "6. the cup the cup the cup the cup is round",                 # repetitive
        "7. This is a DRAWING of a cup -- classified as cups and mugs!",  # duplicate of 1
        "8.",                                                           # empty
        "9. The egg cup can also be referred to as an egg holder.",    # kept
        "10. A round bowl on a low foot with a wide rim.",            # surplus (limit 2)
        "11. A tall vase with a narrow ne",                            # truncated (answer cut)
    ])
    c = clean_generated(answer, "length", limit=2, max_words=60)
    assert c.kept == ["This is a drawing of a cup, classified as cups and mugs.",
                      "The egg cup can also be referred to as an egg holder."]
    assert c.dropped == {"off_format": 3, "too_short": 1, "over_long": 1, "repetitive": 1, "duplicate": 1,
                         "empty": 1, "surplus": 1, "truncated": 1}
    assert set(c.dropped) == set(REASONS)
    again = clean_generated("1. THE egg cup can also be referred to as an egg holder!\n2. A cup on a stand.", "stop",
                            existing=c.kept)
    assert again.kept == ["A cup on a stand."] and again.dropped == {"duplicate": 1}
    assert clean_generated("A\x00 cup\u200b on  a\tsaucer.", "stop").kept == ["A cup on a saucer."]


def test_clean_description():
    assert clean_description("A round cup with a tall handle and a wide rim.  It has a", "length") == (
        "A round cup with a tall handle and a wide rim.", "description_truncated")
    assert clean_description("A cup. It has a tall handle and a wide", "length") == (  # most of it is kept
        "A cup. It has a tall handle and a wide", "description_truncated")
    assert clean_description("A round cup with a handle.", "stop") == ("A round cup with a handle.", None)
    assert clean_description("   ", "stop") == (None, "description_empty")
    assert clean_description(" ".join(["a round cup"] * 8), "stop") == (None, "description_repetitive")


# ---- plan, workers, journal ---------------------------------------------------------------------------------------

def test_plan_ranges_and_differences(tmp_path):
    keys = [f"P{i}_00" for i in range(10)]
    plan = make_plan(keys, 4, {"caption": {"n": 20}, "llm": {"model": "a"}})
    assert plan.num_parts == 3 and [plan.part_range(p) for p in range(3)] == [(0, 4), (4, 8), (8, 10)]
    store = PartStore(tmp_path)
    store.check_plan(plan)
    store.check_plan(make_plan(keys, 4, {"caption": {"n": 20}, "llm": {"model": "a"}}))  # the same plan: fine
    with pytest.raises(ValueError, match=r"other settings.*caption.n: 20 -> 5; llm.model: 'a' -> 'b'"):
        store.check_plan(make_plan(keys, 4, {"caption": {"n": 5}, "llm": {"model": "b"}}))
    with pytest.raises(ValueError, match=r"drawings: 10 -> 9; .*input keys"):
        store.check_plan(make_plan(keys[:9], 4, plan.settings))


def test_worker_identity():
    assert worker_identity(env={}) == (0, 1, "single worker")
    assert worker_identity(2, 5, env={"RANK": "1", "WORLD_SIZE": "4"}) == (2, 5, "--task-index/--num-tasks")
    assert worker_identity(env={"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4, "RANK/WORLD_SIZE")
    assert worker_identity(env={"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == (3, 8, "SLURM tasks")
    arr = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3",
           "SLURM_ARRAY_TASK_STEP": "1"}
    assert worker_identity(env=arr) == (2, 3, "SLURM array")
    assert worker_identity(env={**arr, "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}) == (5, 6, "SLURM array")
    assert worker_identity(env={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0",
                                "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_STEP": "2"}) == (2, 5, "SLURM array")
    with pytest.raises(ValueError, match="out of range"):
        worker_identity(3, 3, env={})


def test_part_order_covers_every_part_own_first():
    assert part_order(7, 1, 3, steal=False) == [1, 4]
    order = part_order(7, 1, 3)
    assert order[:2] == [1, 4] and sorted(order) == list(range(7))
    assert part_order(2, 2, 3) == [0, 1]  # a worker without parts of its own still helps


def test_journal_drops_a_torn_line_and_parts_are_held_exclusively(tmp_path):
    store = PartStore(tmp_path)
    store.append(0, [{"key": "a", "status": "ok"}, {"key": "b", "status": "ok"}])
    with open(store.path(0, ".journal"), "ab") as f:
        f.write(b'{"key": "c", "sta')  # a write cut by SIGKILL
    entries, cut = store.read_journal(0, ["a", "b", "c", "d"])
    assert sorted(entries) == ["a", "b"] and cut == len(b'{"key": "c", "sta')
    assert store.path(0, ".journal").read_bytes().endswith(b'"ok"}\n')
    store.append(0, [{"key": "c", "status": "failed"}, {"key": "zz", "status": "ok"}])  # zz: not of this part
    assert sorted(store.read_journal(0, ["a", "b", "c", "d"])[0]) == ["a", "b", "c"]
    with store.hold(0) as first:
        with store.hold(0) as second:  # another open file description: flock conflicts as across processes
            assert first and not second
        with store.hold(1) as other:
            assert other
    with store.hold(0) as again:
        assert again
    plan = make_plan(["a", "b", "c"], 3, {})
    assert not store.is_done(0, plan.fingerprint)
    store.commit(0, [{"key": "a", "captions": ["x"]}], {"fingerprint": plan.fingerprint})
    assert store.is_done(0, plan.fingerprint) and not store.path(0, ".journal").exists()
    assert not store.is_done(0, make_plan(["a"], 3, {}).fingerprint)
    assert not [n for n in os.listdir(store.dir) if ".tmp-" in n]


# ---- HTTP helpers -------------------------------------------------------------------------------------------------

def test_http_helpers():
    assert retry_after_seconds({"Retry-After": "2.5"}) == 2.5
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after_seconds({}) is None
    msgs = [{"role": "user", "content": [{"type": "image", "image": None}, {"type": "text", "text": "x" * 400}]}]
    assert estimate_tokens(msgs, 50) == 1000 + 100 + 50


def test_token_bucket_rate():
    import asyncio
    import time

    async def go():
        b = TokenBucket(rate=20.0, capacity=2)
        t = time.monotonic()
        for _ in range(6):
            await b.take(1)
        return time.monotonic() - t

    took = asyncio.run(go())
    assert 0.15 <= took < 1.0  # 2 at once, then 4 at 20/s


def test_drawing_task_is_plain_data():
    t = DrawingTask(0, "K_00", "/x.png", {"object": "cup"})
    assert t.key == "K_00" and t.fields == {"object": "cup"}


def test_progress_as_log_lines(capsys):
    from patentclip.shards.captioning.runner import LogProgress

    p = LogProgress(total=10, desc="captions 1/2", every=0.0)
    p.set_postfix_str("captions/drawing 4.0")
    p.update(4)
    line = capsys.readouterr().err
    assert line.startswith("[captions 1/2] 4/10 drawings, ") and " drawings/s, ETA " in line
    assert line.rstrip().endswith("captions/drawing 4.0")
