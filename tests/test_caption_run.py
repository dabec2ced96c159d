"""patentclip-caption end to end on tiny local models: the captions file, its join into shards with provenance,
reruns, split workers, a worker killed mid-part (real process, SIGKILL), and a SLURM array (slurm/caption.sh)."""
import ast
import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from realdata import realdata_dir
from patentclip.plugins import fault_points
from patentclip.shards.build import build_shards
from patentclip.shards.captioning.cli import main
from patentclip.shards.captioning.parsing import REASONS, clean_description
from patentclip.shards.captioning.prompts import request_seed
from patentclip.shards.importers import ImportOptions
from patentclip.shards.synth import generate_synthetic_patents

REPO = Path(__file__).resolve().parents[1]
# 12 patents x 2 views = 24 drawings; parts of 12, batches of 4: 2 parts of 3 batches.
SETTINGS = ["--num-captions", "5", "--min-captions", "2", "--max-attempts", "2", "--captioner-max-tokens", "16",
            "--llm-max-tokens", "40", "--batch-size", "4", "--part-size", "12", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def caption_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption-input")
    manifest = generate_synthetic_patents(root / "patents", num_patents=12, num_classes=3, image_size=48,
                                          views=("front", "side"), seed=1)
    lines = [json.loads(ln) for ln in Path(manifest).read_text().splitlines()]
    broken = root / "patents" / lines[3]["drawings"][1]["path"]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # an unreadable drawing: reported, never captioned
    keys = [f"{r['patent_id']}_{i:02d}" for r in lines for i in range(len(r["drawings"]))]
    return {"manifest": manifest, "keys": keys, "broken": f"{lines[3]['patent_id']}_01"}


def args_for(caption_input, models, out, *extra):
    return ["run", "--manifest", str(caption_input["manifest"]), "--out", str(out), "--captioner-model",
            str(models["vlm"]), "--llm-model", str(models["lm"]), *SETTINGS, "--no-progress", *extra]


def lines_of(path):
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def reference(caption_input, tiny_caption_models, tmp_path_factory):
    """One uninterrupted single-worker run."""
    out = tmp_path_factory.mktemp("reference")
    assert main(args_for(caption_input, tiny_caption_models, out)) == 0
    return out


def test_captions_file_report_and_provenance(reference, caption_input, tiny_caption_models):
    lines = lines_of(reference / "captions.jsonl")
    keys = [ln["key"] for ln in lines]
    assert len(keys) == len(set(keys)) and set(keys) <= set(caption_input["keys"])
    assert keys == [k for k in caption_input["keys"] if k in set(keys)]  # input order
    report = json.loads((reference / "caption_report.json").read_text())
    t = report["totals"]
    assert t["drawings"] == 24 == t["ok"] + t["below_min"] + t["failed"]
    assert len(lines) == t["ok"] + t["below_min"] == report["lines"]
    assert {"key": caption_input["broken"], "kind": "unreadable_image"}.items() <= t["failed_list"][0].items()
    assert caption_input["broken"] not in keys
    assert set(t["dropped_by_reason"]) <= set(REASONS)
    assert t["candidates"] == t["captions"] + sum(v for k, v in t["dropped_by_reason"].items() if k != "surplus")
    assert sum(len(ln["captions"]) for ln in lines) == t["captions"]
    below = set(t["below_min_keys"])
    for ln in lines:
        assert 1 <= len(ln["captions"]) <= 5 and len(ln["provenance"]) == len(ln["captions"])
        assert (len(ln["captions"]) < 2) == (ln["key"] in below)
        for p in ln["provenance"]:
            assert p["stage"] == "llm" and p["engine"] == "transformers" and p["model"] == str(tiny_caption_models["lm"])
            assert p["instruction"].startswith("enrich-v1@")
            assert p["seed"] in {request_seed(0, ln["key"], "llm", a) for a in range(2)}
        if "description" in ln:
            d = ln["description_provenance"]
            assert d["instruction"].startswith("captioner-v1@") and d["seed"] == request_seed(0, ln["key"],
                                                                                               "captioner")
    llm = t["engines"]["transformers:" + str(tiny_caption_models["lm"])]
    assert llm["requests"] == sum(int(k) * v for k, v in t["llm_answers"].items()) and llm["completion_tokens"] > 0
    runs = t["runs"]
    assert len(runs) == 1 and runs[0]["drawings_generated"] == 24 and runs[0]["generate_seconds"] > 0
    text = (reference / "caption_report.txt").read_text()
    assert "drawings: 24:" in text and "unreadable_image: 1" in text and "outside generate" in text


def test_shards_built_from_it_carry_the_provenance(reference, caption_input, tmp_path):
    rep = build_shards(caption_input["manifest"], tmp_path / "shards", samples_per_shard=100, progress=False,
                       captions=str(reference / "captions.jsonl"), splits=(("train", 1.0),))
    by_key = {ln["key"]: ln for ln in lines_of(reference / "captions.jsonl")}
    assert rep["captions"]["drawings_matched"] == len(by_key)
    seen = 0
    for tar in sorted((tmp_path / "shards" / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    key = m.name[:-5]
                    if key in by_key:
                        seen += 1
                        assert meta["captions"] == by_key[key]["captions"]
                        assert meta["caption_provenance"] == by_key[key]["provenance"]
                    else:
                        assert "caption_provenance" not in meta  # its own captions
    assert seen == len(by_key)


def test_rerun_skips_what_is_done_and_refuses_other_settings(reference, caption_input, tiny_caption_models,
                                                             capsys):
    before = (reference / "captions.jsonl").read_bytes()
    assert main(args_for(caption_input, tiny_caption_models, reference)) == 0
    assert (reference / "captions.jsonl").read_bytes() == before
    runs = [json.loads(p.read_text()) for p in sorted((reference / "runs").glob("*.json"))]
    assert sorted(r["drawings_generated"] for r in runs) == [0, 24]
    capsys.readouterr()
    assert main(args_for(caption_input, tiny_caption_models, reference, "--num-captions", "7")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "caption.n: 5 -> 7" in err


def test_workers_split_the_parts_and_write_the_same_file(reference, caption_input, tiny_caption_models, tmp_path,
                                                         capsys):
    out = tmp_path / "split"
    assert main(args_for(caption_input, tiny_caption_models, out, "--task-index", "1", "--num-tasks", "2",
                         "--no-steal")) == 0
    assert not (out / "captions.jsonl").exists()  # part 0 is worker 0's
    assert main(["status", str(out)]) == 0
    assert "1 done, 0 open [], 1 not started" in capsys.readouterr().out
    assert main(args_for(caption_input, tiny_caption_models, out, "--task-index", "0", "--num-tasks", "2")) == 0
    assert (out / "captions.jsonl").read_bytes() == (reference / "captions.jsonl").read_bytes()


def test_a_killed_worker_loses_at_most_its_batch(reference, caption_input, tiny_caption_models, tmp_path):
    out = tmp_path / "killed"
    gate = tmp_path / "hold"  # the worker is held right after journaling its first batch of part 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           **fault_points.arm(gate, "caption-batch", "parts/part-000000.journal")}
    proc = subprocess.Popen([sys.executable, "-m", "patentclip.shards.captioning.cli",
                             *args_for(caption_input, tiny_caption_models, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = out / "parts" / "part-000000.journal"
    try:
        fault_points.wait_reached(gate, 240, alive=lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert not (out / "parts" / "part-000000.jsonl").exists()
    journaled = journal.read_bytes().count(b"\n")
    assert journaled == 4  # the first batch, whole
    assert main(args_for(caption_input, tiny_caption_models, out)) == 0
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert [r["drawings_generated"] for r in runs] == [24 - journaled]  # nothing journaled was captioned again
    assert (out / "captions.jsonl").read_bytes() == (reference / "captions.jsonl").read_bytes()
    assert not journal.exists()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")), gpus=2).up()
    yield cluster
    cluster.down()


@pytest.mark.slow
def test_slurm_array_of_workers(slurm_cluster, reference, caption_input, tiny_caption_models, tmp_path):
    """slurm/caption.sh as submitted on a cluster (2 array tasks, one GPU each as the script asks; the models run
    on the CPU here): the tasks split the parts and the file equals the single worker's."""
    out = tmp_path / "array"
    env = {"PATENTCLIP_HOME": str(REPO), "PATENTCLIP_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
           "PATENTCLIP_CAPTION_INPUT": str(caption_input["manifest"]), "PATENTCLIP_CAPTION_OUT": str(out),
           "PATENTCLIP_CAPTION_ENGINE": "transformers", "PATENTCLIP_CAPTIONER_MODEL": str(tiny_caption_models["vlm"]),
           "PATENTCLIP_LLM_MODEL": str(tiny_caption_models["lm"]), "PATENTCLIP_CAPTION_ARGS": " ".join(SETTINGS),
           "OMP_NUM_THREADS": "1"}
    r = slurm_cluster.sbatch("--wait", "--array=0-1", "--cpus-per-task=1", "-D", tmp_path, "-o",
                             tmp_path / "task-%a.out", REPO / "slurm" / "caption.sh", env_extra=env)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("task-*.out")))
    assert r.returncode == 0, r.stderr + logs[-4000:]
    assert "array task 0 of 2" in logs and "array task 1 of 2" in logs and "worker 1 of 2 (SLURM array)" in logs
    assert (out / "captions.jsonl").read_bytes() == (reference / "captions.jsonl").read_bytes()
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert sorted(r["worker"] for r in runs) == ["0/2", "1/2"] and sum(r["drawings_generated"] for r in runs) == 24


def test_real_uspto_drawings_and_a_real_captioners_descriptions(tiny_caption_models, tmp_path, capsys):
    """IMPACT's sample (DesignCLIP's authors): real USPTO grant drawings (CCITT G4 TIFF sheets) imported from a CSV
    as users do, captioned and joined into shards; and its LLaVA descriptions, real captioner output, survive
    clean_description (the cleaning must not drop what a real captioner writes)."""
    impact = realdata_dir() / "impact_sample"
    csv.field_size_limit(1 << 30)
    rows = list(csv.DictReader(open(impact / "sample_data.csv", encoding="utf-8")))
    kept = [clean_description(r["caption"], "stop") for r in rows]
    assert len(rows) == 50 and all(text for text, _ in kept), [r["caption"] for r, (t, _) in zip(rows, kept) if not t]
    chosen = {r["title"]: r for r in rows if r["title"] in ("Garment with a side pocket", "Bat", "Wheel")}
    table = tmp_path / "drawings.csv"
    patents = set()
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["full_path", "cat", "title"])
        for title, r in chosen.items():
            for name in ast.literal_eval(r["file_names"])[1:3]:
                folder = name.rsplit("-D", 1)[0]
                patents.add(folder.split("-")[0])
                code = ast.literal_eval(r["class_search"])[0]
                w.writerow([f"{folder}/{name}", f"{code[:2]}-{code[2:]}", title])
    common = ["--format", "csv", "--input", str(table), "--images-root", str(impact), "--title-column", "title"]
    assert main(["preview", *common, "--limit", "1"]) == 0
    assert "the patent is titled \"Garment with a side pocket\"; Locarno class 02-02" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["run", *common, "--out", str(out), "--captioner-model", str(tiny_caption_models["vlm"]),
                 "--llm-model", str(tiny_caption_models["lm"]), *SETTINGS, "--no-progress"]) == 0
    report = json.loads((out / "caption_report.json").read_text())["totals"]
    assert report["drawings"] == 6 and report["failed"] == 0  # the G4 TIFF sheets decode for the captioner
    keys = [ln["key"] for ln in lines_of(out / "captions.jsonl")]
    assert keys and {k.split("_")[0] for k in keys} <= patents and len(patents) == 3
    rep = build_shards(str(table), tmp_path / "shards", input_format="csv", progress=False,
                       captions=str(out / "captions.jsonl"), splits=(("train", 1.0),), samples_per_shard=100,
                       import_options=ImportOptions(images_root=str(impact), title_column="title"))
    assert rep["captions"]["drawings_matched"] == len(keys) and rep["drawings_written_total"] == 6


def test_provenance_through_the_join_modes_and_a_malformed_list(caption_input, tmp_path):
    k1, k2 = caption_input["keys"][0], caption_input["keys"][2]
    prov = {"stage": "llm", "engine": "http", "model": "m", "instruction": "enrich-v1@0", "seed": 1}
    cap = tmp_path / "c.jsonl"
    cap.write_text(json.dumps({"key": k1, "captions": ["A cup.", "  ", "A mug."],
                               "provenance": [prov, {**prov, "seed": 2}, {**prov, "seed": 3}]}) + "\n"
                   + json.dumps({"key": k2, "captions": ["A jug."], "provenance": [prov, prov]}) + "\n")
    rep = build_shards(caption_input["manifest"], tmp_path / "s", samples_per_shard=100, progress=False,
                       captions=str(cap), captions_join="prepend", splits=(("train", 1.0),))
    metas = {}
    for tar in (tmp_path / "s" / "train").glob("*.tar"):
        with tarfile.open(tar) as tf:
            metas.update({m.name[:-5]: json.loads(tf.extractfile(m).read()) for m in tf.getmembers()
                          if m.name.endswith(".json")})
    m1 = metas[k1]
    assert m1["captions"][:2] == ["A cup.", "A mug."] and len(m1["captions"]) > 2  # then its own
    assert m1["caption_provenance"][:2] == [prov, {**prov, "seed": 3}]  # the empty caption and its entry went
    assert m1["caption_provenance"][2:] == [None] * (len(m1["captions"]) - 2)
    assert metas[k2]["captions"][0] == "A jug." and "caption_provenance" not in metas[k2]
    dropped = [p for p in rep["repairs"] if p["kind"] == "caption_provenance_dropped"]
    assert len(dropped) == 1 and dropped[0]["reason"].endswith(
        "captions file: provenance is not a list of 1 objects (one per caption); ignored")


def test_captioner_only_and_kept_descriptions(caption_input, tiny_caption_models, tmp_path):
    base = ["run", "--manifest", str(caption_input["manifest"]), "--captioner-model", str(tiny_caption_models["vlm"]),
            "--llm-model", str(tiny_caption_models["lm"]), *SETTINGS, "--no-progress", "--limit", "4"]
    assert main([*base, "--out", str(tmp_path / "only"), "--llm-engine", "none"]) == 0
    only = lines_of(tmp_path / "only" / "captions.jsonl")
    assert only and all(ln["captions"] == [ln["description"]] for ln in only)
    assert all(ln["provenance"] == [ln["description_provenance"]] for ln in only)
    assert json.loads((tmp_path / "only" / "plan.json").read_text())["settings"]["llm"] is None
    assert main([*base, "--out", str(tmp_path / "kept"), "--keep-description"]) == 0
    for ln in lines_of(tmp_path / "kept" / "captions.jsonl"):
        if "description" in ln:
            assert ln["captions"][-1] == ln["description"] and ln["provenance"][-1]["stage"] == "captioner"
            assert all(p["stage"] == "llm" for p in ln["provenance"][:-1])


def test_warning_signal_stops_after_the_batch_and_the_rerun_continues(reference, caption_input,
                                                                      tiny_caption_models, tmp_path):
    """SIGUSR1 (SLURM's warning signal; SIGTERM alike) sent to this very process mid-part: the worker journals the
    batch it is generating, exits with 3 (slurm/caption.sh requeues on it), and the rerun finishes the file."""
    import threading

    out = tmp_path / "signalled"
    journal = out / "parts" / "part-000000.journal"

    def signal_after_first_batch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 4:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.01)

    t = threading.Thread(target=signal_after_first_batch, daemon=True)
    t.start()
    assert main(args_for(caption_input, tiny_caption_models, out)) == 3
    t.join()
    journaled = journal.read_bytes().count(b"\n")
    assert journaled % 4 == 0 and 4 <= journaled < 24 and not (out / "captions.jsonl").exists()
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["stopped"] == "SIGUSR1" and run["drawings_generated"] == journaled
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handlers are restored
    assert main(args_for(caption_input, tiny_caption_models, out)) == 0
    assert (out / "captions.jsonl").read_bytes() == (reference / "captions.jsonl").read_bytes()
