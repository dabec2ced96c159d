"""``patentclip-caption``: captions of design-patent drawings as the papers make them, a captioner and an LLM.

A vision-language model (the captioner) describes each drawing; a language model turns the description and the
patent's fields (object, title, view, Locarno class, the figure description) into N diverse captions; the answers
are parsed, cleaned and counted. The result is a captions file that ``patentclip-shards build --captions`` joins,
with the provenance of every caption (engine, model, instruction version, seed). Work is split into parts over any
number of processes, SLURM array tasks or ranks; parts commit atomically and a rerun continues where it stopped.
Guide: docs/captioning.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..captions import load_templates
from ..cli import add_import_arguments, import_options_from
from ..importers import formats, import_records
from .engines import EngineError, make_engine
from .instructions import builtin_names, load_instruction, resolve
from .pipeline import Captioner, CaptionSettings
from .prompts import captioner_messages, drawing_tasks, llm_messages
from .report import merge, status, summary
from .runner import StopFlag, run_worker
from .work import PLAN_FILE, Plan, make_plan, worker_identity

ENGINE_CHOICES = ("transformers", "vllm", "http", "none")


def _kv(items: Optional[List[str]], flag: str) -> Dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, true/false, objects), else a string."""
    out: Dict[str, Any] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise SystemExit(f"{flag} {it!r}: expected KEY=VALUE")
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def _price(text: Optional[str], flag: str) -> Tuple[float, float]:
    if not text:
        return 0.0, 0.0
    try:
        a, b = (float(x) for x in text.split(","))
        return a, b
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: expected IN,OUT (price per million prompt and completion tokens)") \
            from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-caption", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="caption drawings (one worker; start several, or a SLURM array, to split the work)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Caption the drawings of a manifest (or a DeepPatent2 / DeepPatent / CSV input) into "
                                   "OUT/captions.jsonl.\n\n"
                                   "Stages: --captioner-* (a vision-language model sees each drawing; 'none' skips "
                                   "it) and --llm-* (a language model writes --num-captions captions from the "
                                   "description and the fields; 'none' keeps the description as the caption). "
                                   "Engines: transformers (a local model folder, CPU or GPU), vllm (offline batched "
                                   "inference on GPUs), http (any OpenAI-compatible endpoint: vllm serve, "
                                   "transformers serve, a hosted model).\n\n"
                                   "Splitting: the drawings are cut into parts of --part-size; worker i of n (from "
                                   "--task-index/--num-tasks, a SLURM array, RANK/WORLD_SIZE) takes its parts, then "
                                   "helps with the others. Each batch is journaled to disk; a part commits "
                                   "atomically; a rerun of the same command skips what is done. When the last part "
                                   "is done, captions.jsonl and caption_report.json/.txt are written.\n\n"
                                   "Exit status: 0 this worker's work is done, 1 some drawings failed in the engine "
                                   "(rerun to retry them), 2 bad arguments or configuration, 3 stopped by SIGTERM/"
                                   "SIGUSR1 (requeue), 130 Ctrl-C.")
    g = r.add_argument_group("input and output")
    g.add_argument("--format", dest="input_format", default="manifest", choices=formats(),
                   help="input format, a registered importer (default: manifest)")
    g.add_argument("--manifest", "--input", dest="inputs", action="append", required=True, metavar="FILE",
                   help="input file; repeat for several (as for patentclip-shards build)")
    g.add_argument("--out", required=True, help="run folder (shared by all workers): plan, parts, captions.jsonl")
    g.add_argument("--limit", type=int, default=None, help="only the first N drawings (to try instructions)")
    for stage, what in (("captioner", "vision-language model that describes each drawing"),
                        ("llm", "language model that writes the captions")):
        g = r.add_argument_group(f"{stage}: the {what}")
        g.add_argument(f"--{stage}-engine", choices=ENGINE_CHOICES, default="transformers",
                       help="engine, or none to skip the stage (default: transformers)")
        g.add_argument(f"--{stage}-model", default=None,
                       help="model folder or name (the endpoint's model name for http)")
        g.add_argument(f"--{stage}-url", default=None, help="http: the endpoint's OpenAI base URL, e.g. "
                                                            "http://gpu-node:8000/v1")
        g.add_argument(f"--{stage}-instruction", default=None, metavar="NAME|FILE",
                       help="instruction: a built-in name or a TOML file (default: "
                            + ("captioner-v1" if stage == "captioner" else "enrich-v1") + "; see the instructions "
                                                                                          "command)")
        g.add_argument(f"--{stage}-arg", action="append", default=None, metavar="KEY=VALUE",
                       help="engine option: from_pretrained keyword (transformers), vllm.LLM keyword (vllm), or a "
                            "request body field (http); repeat")
        g.add_argument(f"--{stage}-price", default=None, metavar="IN,OUT",
                       help="price per million prompt and completion tokens, for the cost count")
    g = r.add_argument_group("captions")
    g.add_argument("--num-captions", type=int, default=20,
                   help="captions asked of the language model per drawing (the LLM-informed paper: about 20; "
                        "default: %(default)s)")
    g.add_argument("--min-captions", type=int, default=5,
                   help="a drawing with fewer distinct captions is asked again, then reported (default: "
                        "%(default)s)")
    g.add_argument("--max-attempts", type=int, default=3, help="language-model answers per drawing at most "
                                                                "(default: %(default)s)")
    g.add_argument("--caption-patterns", default=None, metavar="FILE",
                   help="caption patterns shown to the language model (one per line or a JSON list), instead of "
                        "the instruction's")
    g.add_argument("--keep-description", action="store_true",
                   help="also keep the captioner's description as a caption, the last one (it is always in the "
                        "line's 'description')")
    g.add_argument("--seed", type=int, default=0, help="run seed; each request's seed derives from it, the drawing "
                                                       "and the attempt (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.7, help="language model (default: %(default)s)")
    g.add_argument("--captioner-temperature", type=float, default=0.2, help="(default: %(default)s)")
    g.add_argument("--top-p", type=float, default=0.95, help="(default: %(default)s)")
    g.add_argument("--captioner-max-tokens", type=int, default=256, help="(default: %(default)s)")
    g.add_argument("--llm-max-tokens", type=int, default=1024, help="(default: %(default)s)")
    g.add_argument("--min-words", type=int, default=3, help="shorter captions are dropped (default: %(default)s)")
    g.add_argument("--max-words", type=int, default=60, help="longer captions are dropped (default: %(default)s)")
    g.add_argument("--max-chars", type=int, default=300,
                   help="longer captions are dropped; CLIP reads 77 tokens (default: %(default)s)")
    g.add_argument("--image-max-side", type=int, default=768,
                   help="drawings are shrunk to this longest side for the captioner (default: %(default)s)")
    g.add_argument("--no-system-role", action="store_true",
                   help="put the instructions' system text into the user message (chat templates without a "
                        "system role)")
    g = r.add_argument_group("engines")
    g.add_argument("--device", default="auto", help="transformers: auto, cpu, cuda, cuda:1 (default: auto)")
    g.add_argument("--dtype", default="auto", help="transformers/vllm: auto, bfloat16, float16, float32")
    g.add_argument("--threads", type=int, default=0,
                   help="transformers on CPU: torch threads (default: torch's choice; 1 on a shared CPU)")
    g.add_argument("--batch-size", type=int, default=32,
                   help="drawings per batch: the unit journaled to disk (default: %(default)s; vllm: use hundreds)")
    g.add_argument("--engine-batch-size", type=int, default=None,
                   help="transformers: rows per generate call (default: --batch-size)")
    g.add_argument("--trust-remote-code", action="store_true", help="transformers/vllm: allow model code")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="http: environment variable holding the API key (default: %(default)s)")
    g.add_argument("--concurrency", type=int, default=8, help="http: requests in flight at most (default: "
                                                              "%(default)s)")
    g.add_argument("--max-retries", type=int, default=6, help="http: retries of a failed request (default: "
                                                              "%(default)s)")
    g.add_argument("--backoff", type=float, default=1.0, help="http: first retry wait in seconds, doubled each "
                                                              "retry (default: %(default)s)")
    g.add_argument("--backoff-max", type=float, default=60.0, help="http: longest wait (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=600.0, help="http: seconds per request (default: %(default)s)")
    g.add_argument("--requests-per-minute", type=float, default=0, help="http: rate limit, 0 = none")
    g.add_argument("--tokens-per-minute", type=float, default=0, help="http: token rate limit, 0 = none")
    g.add_argument("--max-tokens-field", choices=["max_tokens", "max_completion_tokens"], default="max_tokens",
                   help="http: the request field of the token limit (newer OpenAI models: max_completion_tokens)")
    g = r.add_argument_group("splitting (docs/captioning.md)")
    g.add_argument("--part-size", type=int, default=1000, help="drawings per part (default: %(default)s)")
    g.add_argument("--task-index", type=int, default=None, help="this worker's index (default: from SLURM / RANK)")
    g.add_argument("--num-tasks", type=int, default=None, help="number of workers (default: from SLURM / "
                                                               "WORLD_SIZE)")
    g.add_argument("--no-steal", action="store_true", help="work on this worker's own parts only")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_import_arguments(r.add_argument_group("importers (docs/importers.md)"))

    m = sub.add_parser("merge", help="write captions.jsonl and the report once every part is done",
                       description="Concatenate the committed parts of a run into OUT/captions.jsonl and write "
                                   "caption_report.json / .txt (the last worker does this itself).")
    m.add_argument("out", help="run folder")
    s = sub.add_parser("status", help="parts done, open and not started",
                       description="How far a run is: parts done, parts with a journal (being worked on, or left by "
                                   "a stopped worker), parts not started.")
    s.add_argument("out", help="run folder")
    s.add_argument("--json", action="store_true", help="print JSON")
    i = sub.add_parser("instructions", help="list the built-in instructions, or print one",
                       description="Without NAME: the built-in instruction names. With NAME (or a TOML file): its "
                                   "version id and text.")
    i.add_argument("name", nargs="?", default=None)
    v = sub.add_parser("preview", help="print the prompts of the first drawings (no model)",
                       description="Render the captioner's and the language model's prompts for the first drawings "
                                   "of an input, as run would send them (the description is a placeholder).")
    v.add_argument("--format", dest="input_format", default="manifest", choices=formats())
    v.add_argument("--manifest", "--input", dest="inputs", action="append", required=True, metavar="FILE")
    v.add_argument("--limit", type=int, default=2)
    v.add_argument("--captioner-instruction", default=None)
    v.add_argument("--llm-instruction", default=None)
    v.add_argument("--caption-patterns", default=None)
    v.add_argument("--num-captions", type=int, default=20)
    add_import_arguments(v.add_argument_group("importers"))
    t = sub.add_parser("tiny-models", help="write tiny random-weight models to try a set-up (no download)",
                       description="Write OUT/lm (a tiny Llama) and OUT/vlm (a tiny LLaVA) with a locally trained "
                                   "tokenizer: complete model folders that the transformers and vllm engines and "
                                   "transformers serve load. Their captions are nonsense; use them to check a "
                                   "cluster set-up (slurm/caption.sh) end to end before the real models run.")
    t.add_argument("out", help="folder to write lm/ and vlm/ into")
    t.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    return p


def _read_tasks(args):
    records, problems, _ = import_records(args.input_format, args.inputs if len(args.inputs) > 1 else args.inputs[0],
                                          import_options_from(args))
    for pr in problems[:20]:
        print(f"input: {pr.reason}", file=sys.stderr)
    if len(problems) > 20:
        print(f"input: ... {len(problems) - 20} more problems (the same as patentclip-shards build reports)",
              file=sys.stderr)
    tasks = drawing_tasks(records)
    return tasks[:args.limit] if args.limit is not None else tasks


def _instructions(args):
    cap = load_instruction(args.captioner_instruction, "captioner")
    llm = load_instruction(args.llm_instruction, "llm")
    if args.caption_patterns:
        llm = llm.with_templates(load_templates(args.caption_patterns, fields=None))
    return cap, llm


def _engines(args):
    made: Dict[tuple, Any] = {}
    out = {}
    for stage in ("captioner", "llm"):
        kind = getattr(args, f"{stage}_engine")
        if kind == "none":
            out[stage] = None
            continue
        model = getattr(args, f"{stage}_model")
        if not model:
            raise SystemExit(f"--{stage}-model is required with --{stage}-engine {kind} (or --{stage}-engine none)")
        url = getattr(args, f"{stage}_url")
        extra = _kv(getattr(args, f"{stage}_arg"), f"--{stage}-arg")
        price_in, price_out = _price(getattr(args, f"{stage}_price"), f"--{stage}-price")
        key = (kind, model, url, json.dumps(extra, sort_keys=True), price_in, price_out)
        if key not in made:
            kw: Dict[str, Any] = {"price_in": price_in, "price_out": price_out}
            if kind == "transformers":
                kw.update(device=args.device, dtype=args.dtype, batch_size=args.engine_batch_size or args.batch_size,
                          threads=args.threads,
                          trust_remote_code=args.trust_remote_code, model_kwargs=extra)
            elif kind == "vllm":
                kw.update(dtype=args.dtype, seed=args.seed, trust_remote_code=args.trust_remote_code,
                          engine_kwargs=extra)
            else:
                if not url:
                    raise SystemExit(f"--{stage}-url is required with --{stage}-engine http")
                kw.update(base_url=url, api_key_env=args.api_key_env, concurrency=args.concurrency,
                          max_retries=args.max_retries, backoff=args.backoff, backoff_max=args.backoff_max,
                          timeout=args.timeout, requests_per_minute=args.requests_per_minute,
                          tokens_per_minute=args.tokens_per_minute, max_tokens_field=args.max_tokens_field,
                          extra_body=extra, vision=stage == "captioner")
            made[key] = make_engine(kind, model, **kw)
        out[stage] = made[key]
    return out["captioner"], out["llm"]


def run_settings(settings, captioner, llm) -> Dict[str, Any]:
    """The plan's settings: everything that decides what is written."""
    return {"caption": settings.to_dict(),
            "captioner": None if captioner is None else {**captioner[0].identity(), "instruction": captioner[1].id},
            "llm": None if llm is None else {**llm[0].identity(), "instruction": llm[1].id,
                                             "templates": list(llm[1].templates)}}


def cmd_run(args) -> int:
    try:
        worker, workers, source = worker_identity(args.task_index, args.num_tasks)
        cap_instr, llm_instr = _instructions(args)
        no_llm = args.llm_engine == "none"
        settings = CaptionSettings(
            n=1 if no_llm else args.num_captions, min_captions=1 if no_llm else args.min_captions,
            max_attempts=args.max_attempts, seed=args.seed, temperature=args.temperature, top_p=args.top_p,
            captioner_temperature=args.captioner_temperature, captioner_max_tokens=args.captioner_max_tokens,
            llm_max_tokens=args.llm_max_tokens, min_words=args.min_words, max_words=args.max_words,
            max_chars=args.max_chars, image_max_side=args.image_max_side, keep_description=args.keep_description,
            system_role=not args.no_system_role)
        tasks = _read_tasks(args)
        if not tasks:
            print("patentclip-caption: the input has no drawings", file=sys.stderr)
            return 2
        cap_engine, llm_engine = _engines(args)
        captioner = Captioner(settings, (cap_engine, cap_instr) if cap_engine else None,
                              (llm_engine, llm_instr) if llm_engine else None)
        plan = make_plan([t.key for t in tasks], args.part_size,
                         run_settings(settings, captioner.captioner, captioner.llm))
    except (ValueError, FileNotFoundError, EngineError) as exc:
        print(f"patentclip-caption run: {exc}", file=sys.stderr)
        return 2
    print(f"[patentclip-caption] worker {worker + 1} of {workers} ({source}); {len(tasks)} drawings in "
          f"{plan.num_parts} parts of {plan.part_size}; out {args.out}", file=sys.stderr)
    stop = StopFlag().install()
    try:
        run = run_worker(tasks, plan, args.out, captioner, batch_size=args.batch_size, worker=worker,
                         workers=workers, steal=not args.no_steal, progress=not args.no_progress, stop=stop)
    except (ValueError, EngineError) as exc:
        print(f"patentclip-caption run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"\n[patentclip-caption] {exc or 'interrupted'}; the journaled batches are kept: run again to "
              "continue", file=sys.stderr)
        return 130
    finally:
        stop.restore()
        for e in captioner.engines():
            e.close()
    if run.get("report"):
        print(summary(run["report"]))
    else:
        print(f"[patentclip-caption] this worker: {run['drawings_generated']} drawings, {run['parts_committed']} "
              f"parts committed" + (f"; parts held by other workers: {run['parts_busy_elsewhere']}"
                                    if run["parts_busy_elsewhere"] else ""), file=sys.stderr)
    if run["fatal"]:
        print(f"patentclip-caption run: stopped: {run['fatal']}; run again to continue", file=sys.stderr)
        return 1
    if run["stopped"]:
        print(f"[patentclip-caption] stopped by {run['stopped']} after a complete batch; run again to continue",
              file=sys.stderr)
        return 130 if run["stopped"] == "SIGINT" else 3
    if run["open_errors"]:
        ex = run["open_error_examples"][0]
        print(f"patentclip-caption run: {run['open_errors']} drawings failed in the engine and stay open (e.g. "
              f"{ex['key']}: {ex['error']}); run again to retry them", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "instructions":
        if not args.name:
            print("\n".join(builtin_names()))
            return 0
        try:
            text = resolve(args.name, "llm").read_text(encoding="utf-8")
            stage = "llm" if 'stage = "llm"' in text else "captioner"
            ins = load_instruction(args.name, stage)
        except ValueError as exc:
            print(f"patentclip-caption instructions: {exc}", file=sys.stderr)
            return 2
        print(f"# {ins.id} ({ins.source})\n{text}")
        return 0
    if args.command == "tiny-models":
        from .tiny import make_tiny_models  # transformers: only this command and the engines need it

        for name, path in make_tiny_models(args.out, seed=args.seed).items():
            print(f"{name}: {path}")
        return 0
    if args.command == "preview":
        try:
            cap, llm = _instructions(args)
            tasks = _read_tasks(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"patentclip-caption preview: {exc}", file=sys.stderr)
            return 2
        for t in tasks:
            print(f"===== {t.key} ({t.image_path})")
            for m in captioner_messages(t, cap, "<drawing>"):
                c = m["content"] if isinstance(m["content"], str) else " ".join(
                    "[drawing]" if p["type"] == "image" else p["text"] for p in m["content"])
                print(f"--- captioner {m['role']} ({cap.id}):\n{c}")
            for m in llm_messages(t, llm, args.num_captions, "<the captioner's description>"):
                print(f"--- llm {m['role']} ({llm.id}):\n{m['content']}")
        return 0
    st = status(args.out)
    if st is None:
        print(f"patentclip-caption {args.command}: {args.out} holds no caption run ({PLAN_FILE} not found)",
              file=sys.stderr)
        return 2
    if args.command == "status":
        if args.json:
            print(json.dumps(st, indent=1))
        else:
            pl = st["plan"]
            print(f"{args.out}: {st['drawings_done']} of {pl['drawings']} drawings done; parts: {st['parts_done']} "
                  f"done, {len(st['parts_open'])} open {st['parts_open'][:20]}, {st['parts_not_started']} not "
                  f"started; captions.jsonl {'written' if st['merged'] else 'not written yet'}")
        return 0
    pl = st["plan"]
    plan = Plan(pl["drawings"], pl["part_size"], pl["keys_sha256"], pl["settings"])
    try:
        print(summary(merge(args.out, plan)))
    except ValueError as exc:
        print(f"patentclip-caption merge: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
