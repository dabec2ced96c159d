#!/usr/bin/env python
"""Caption throughput: drawings/s of patentclip-caption per engine, and the share of time outside the models' own
generate calls (the project's plumbing), with the tiny local models (patentclip-caption tiny-models).

    python benchmarks/caption_throughput.py [--drawings 96 --repeats 3 --batch-size 16 --llm-max-tokens 64]
    python benchmarks/caption_throughput.py --quick --json out.json     # tiny sizes, seconds

Engines: ``transformers`` (the models in this process, CPU) and ``http`` (the same models behind a real
``transformers serve`` process on 127.0.0.1, tests/model_server.py). Each run captions the same synthetic drawings
(captioner, then language model, parsing, cleaning, journaling, committing, merging) into a fresh run folder, with
the models already loaded; the engines are interleaved ``--repeats`` times so that they see the same background load,
and the best run of each counts.

Figures: drawings/s = drawings / wall time of the worker loop (run_worker). Generate time = the time inside
``model.generate`` (transformers) or during which at least one request was in flight (http). Outside generate =
(wall - generate) / generate: everything patentclip does around the models (drawings read ahead, prompts, the
processor's tokenising, parsing, cleaning, journal fsyncs, commit, merge); target < 10 %. With the tiny models the
generate calls are milliseconds, so this is the hardest case: real models only make the share smaller. For http,
the server's own work (request parsing, image decoding, tokenising) counts as generate time: the share is the
client's. CPU threads: 1 per process (--threads), the fastest on a shared CPU.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the tiny models are local; nothing is downloaded

import torch  # noqa: E402

from patentclip.shards.captioning.cli import run_settings  # noqa: E402
from patentclip.shards.captioning.engines import EngineStats, make_engine  # noqa: E402
from patentclip.shards.captioning.instructions import load_instruction  # noqa: E402
from patentclip.shards.captioning.pipeline import Captioner, CaptionSettings  # noqa: E402
from patentclip.shards.captioning.prompts import drawing_tasks  # noqa: E402
from patentclip.shards.captioning.runner import run_worker  # noqa: E402
from patentclip.shards.captioning.tiny import make_tiny_models  # noqa: E402
from patentclip.shards.captioning.work import make_plan  # noqa: E402
from patentclip.shards.manifest import read_manifest  # noqa: E402
from patentclip.shards.synth import generate_synthetic_patents  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import below, exit_on_sigterm, parse_args, row, write_json  # noqa: E402
from model_server import ModelServer  # noqa: E402


def run_once(engine_pair, tasks, out, settings, batch_size):
    (cap, cap_i), (llm, llm_i) = engine_pair
    for e in (cap, llm):
        e.stats = EngineStats()
    captioner = Captioner(settings, (cap, cap_i), (llm, llm_i))
    plan = make_plan([t.key for t in tasks], 10 ** 6, run_settings(settings, captioner.captioner, captioner.llm))
    t = time.perf_counter()
    run = run_worker(tasks, plan, out, captioner, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - t
    gen = run["generate_seconds"]
    return {"drawings": run["drawings_generated"], "wall_s": round(wall, 3), "loop_s": run["wall_seconds"],
            "generate_s": gen, "drawings_per_s": round(run["drawings_generated"] / run["wall_seconds"], 3),
            "outside_generate_pct": round(100.0 * (run["wall_seconds"] - gen) / gen, 2),
            "captions": run["report"]["totals"]["captions"], "requests": {k: v["requests"] for k, v in
                                                                          run["engines"].items()}}


def main(argv=None) -> int:
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drawings", type=int, default=96, help="drawings per run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per engine (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="drawings per batch (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=4, help="http requests in flight (default: %(default)s)")
    p.add_argument("--num-captions", type=int, default=10, help="(default: %(default)s)")
    p.add_argument("--captioner-max-tokens", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--llm-max-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--engines", default="transformers,http", help="(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (16 drawings, 1 repeat): checks the script")
    p.add_argument("--json", default=None, help="write the figures and the summary rows here")
    a = parse_args(p, argv, dict(drawings=16, repeats=1, batch_size=8, num_captions=5, llm_max_tokens=32,
                                 captioner_max_tokens=16))
    torch.set_num_threads(a.threads)
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    work = Path(tempfile.mkdtemp(prefix="patentclip-caption-bench-"))
    server = None
    try:
        models = make_tiny_models(work / "models")
        views = ("front", "side", "top", "perspective")
        n_patents = max(3 * 4, -(-a.drawings // len(views)))
        manifest = generate_synthetic_patents(work / "patents", num_patents=n_patents, num_classes=3, image_size=128,
                                              views=views, seed=0)
        tasks = drawing_tasks(read_manifest(manifest)[0])[:a.drawings]
        settings = CaptionSettings(n=a.num_captions, min_captions=2, max_attempts=2, seed=0,
                                   captioner_max_tokens=a.captioner_max_tokens, llm_max_tokens=a.llm_max_tokens)
        instr = (load_instruction(None, "captioner"), load_instruction(None, "llm"))
        pairs = {}
        if "transformers" in engines:
            kw = dict(device="cpu", batch_size=a.batch_size, threads=a.threads)
            pairs["transformers"] = ((make_engine("transformers", str(models["vlm"]), **kw), instr[0]),
                                     (make_engine("transformers", str(models["lm"]), **kw), instr[1]))
        if "http" in engines:
            server = ModelServer(work / "serve").start()
            kw = dict(base_url=server.url, concurrency=a.concurrency)
            pairs["http"] = ((make_engine("http", str(models["vlm"]), **kw), instr[0]),
                             (make_engine("http", str(models["lm"]), **kw), instr[1]))
        runs = {name: [] for name in pairs}
        for rep in range(a.repeats):
            for name, pair in pairs.items():
                out = work / f"run-{name}-{rep}"
                r = run_once(pair, tasks, out, settings, a.batch_size)
                shutil.rmtree(out, ignore_errors=True)
                runs[name].append(r)
                print(f"[caption_throughput] {name} run {rep + 1}: {r['drawings_per_s']:.2f} drawings/s, generate "
                      f"{r['generate_s']:.2f} s of {r['loop_s']:.2f} s, outside generate "
                      f"{r['outside_generate_pct']:.1f}%", file=sys.stderr)
        best = {name: max(rs, key=lambda r: r["drawings_per_s"]) for name, rs in runs.items()}
        rows = []
        print(f"\n{'engine':<14}{'drawings/s':>12}{'generate s':>12}{'loop s':>9}{'outside generate':>19}")
        for name, b in best.items():
            print(f"{name:<14}{b['drawings_per_s']:>12.2f}{b['generate_s']:>12.2f}{b['loop_s']:>9.2f}"
                  f"{b['outside_generate_pct']:>18.1f}%")
            rows.append(row(f"{name}: drawings/s (tiny models)", b["drawings_per_s"], "drawings/s"))
            rows.append(below(f"{name}: time outside generate, % of generate", b["outside_generate_pct"], 10.0))
        if {"transformers", "http"} <= set(best):
            ratio = best["http"]["drawings_per_s"] / best["transformers"]["drawings_per_s"]
            print(f"http / transformers: {ratio:.2f}x")
            rows.append(row("http vs in-process transformers", ratio, "x"))
        for name, e in pairs.items():
            for eng, _ in e:
                eng.close()
        if a.json:
            write_json(a.json, {"summary": rows, "config": vars(a), "cpus": os.cpu_count(), "best": best,
                                "runs": runs, "load_avg": os.getloadavg()})
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
