"""The caption engines on tiny local models: transformers (local folders, offline), an OpenAI-compatible HTTP
endpoint (a real ``transformers serve`` process, behind a real fault-injecting proxy for retries, limits and
credentials), vLLM (on a GPU with vLLM installed; skipped otherwise, and said so); the upstream names they use."""
import importlib
import inspect
import math
import os

import pytest
import torch
from PIL import Image, ImageDraw

from model_server import FaultProxy, ModelServer
from patentclip.shards.captioning import compat
from patentclip.shards.captioning.engines import EngineError, Request, make_engine
from patentclip.shards.captioning.engines.hf import SeededGumbelSampler
from patentclip.shards.captioning.engines.http import backoff_delay


def drawing(seed: int) -> Image.Image:
    im = Image.new("RGB", (64, 48), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([8 + seed, 6, 50, 40 - seed], outline="black", width=2)
    return im


def vision_request(seed, text="Describe the distinct visual elements of the design.", max_tokens=12, temp=0.7):
    return Request([{"role": "user", "content": [{"type": "image", "image": drawing(seed % 7)},
                                                 {"type": "text", "text": text}]}], seed, max_tokens, temp)


def text_request(seed, text="Write 5 captions of a drawing of a cup.", max_tokens=16, temp=0.7):
    return Request([{"role": "system", "content": "You write captions."}, {"role": "user", "content": text}], seed,
                   max_tokens, temp)


def _attr(spec):
    module, path = spec.split(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# ---- upstream surface ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module,names", sorted(compat.TRANSFORMERS_NAMES.items()))
def test_transformers_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"transformers moved {module}.{missing}: update patentclip.shards.captioning.compat and engines"


def test_transformers_parameters_exist():
    for spec, params in compat.TRANSFORMERS_PARAMETERS.items():
        sig = inspect.signature(_attr(spec))
        assert set(params) <= set(sig.parameters), (spec, sorted(set(params) - set(sig.parameters)))


def test_vllm_surface():
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed on this machine (it runs on the GPU nodes, in "
                                              "its own environment); its surface is checked where it is")
    for module, names in compat.VLLM_NAMES.items():
        assert all(hasattr(importlib.import_module(module), n) for n in names), names
    for spec, params in compat.VLLM_PARAMETERS.items():
        assert set(params) <= set(inspect.signature(_attr(spec)).parameters), spec
    sp = vllm.SamplingParams(**{f: v for f, v in zip(compat.VLLM_SAMPLING_FIELDS, (1, 0.7, 0.9, 8, 3))})
    assert sp.seed == 3 and sp.max_tokens == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vLLM engine needs a GPU; this machine has none")
def test_vllm_engine_on_gpu(tiny_caption_models):
    pytest.importorskip("vllm", reason="vLLM is not installed on this machine")
    lm = make_engine("vllm", str(tiny_caption_models["lm"]), seed=0,
                     engine_kwargs={"gpu_memory_utilization": 0.2, "max_model_len": 1024, "enforce_eager": True})
    reqs = [text_request(s) for s in range(4)]
    res = lm.generate(reqs)
    assert [r.finish_reason for r in res] and all(r.completion_tokens > 0 and r.prompt_tokens > 0 for r in res)
    assert lm.generate(reqs[2:3])[0].text == res[2].text  # a request's seed, not its batch, decides its text
    vlm = make_engine("vllm", str(tiny_caption_models["vlm"]), seed=0,
                      engine_kwargs={"gpu_memory_utilization": 0.2, "max_model_len": 1024, "enforce_eager": True})
    assert vlm.vision
    out = vlm.generate([vision_request(s) for s in range(3)])
    assert all(r.finish_reason in ("stop", "length") and r.prompt_tokens > 16 for r in out)


# ---- transformers ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_engines(tiny_caption_models):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    lm = make_engine("transformers", str(tiny_caption_models["lm"]), device="cpu", batch_size=3, threads=1)
    vlm = make_engine("transformers", str(tiny_caption_models["vlm"]), device="cpu", batch_size=3, threads=1)
    return lm, vlm


def test_transformers_engine_loads_local_folders(hf_engines, tiny_caption_models):
    lm, vlm = hf_engines
    assert not lm.vision and vlm.vision
    assert lm.identity()["config_sha256"] and lm.identity()["model"] == str(tiny_caption_models["lm"])
    res = vlm.generate([vision_request(s) for s in range(4)])  # 4 requests, batches of 3
    assert len(res) == 4 and all(r.finish_reason in ("stop", "length") for r in res)
    assert all(r.prompt_tokens > 16 for r in res)  # the drawing's 16 image tokens are in the prompt
    assert all(0 < r.completion_tokens <= 12 for r in res)
    assert vlm.stats.requests == 4 and vlm.stats.generate_seconds > 0
    with pytest.raises(EngineError, match="cannot load a model config"):
        make_engine("transformers", str(tiny_caption_models["lm"].parent / "nothing-here"), device="cpu")


def test_seeded_sampling_does_not_depend_on_the_batch(hf_engines):
    lm, vlm = hf_engines
    reqs = [text_request(s, text=f"Write captions of drawing {s} of a lamp.") for s in (11, 12, 13)]
    together = lm.generate(reqs)
    alone = [lm.generate([r])[0] for r in reqs]
    assert [r.text for r in together] == [r.text for r in alone]
    again = lm.generate([text_request(11, text="Write captions of drawing 11 of a lamp.")])[0]
    other = lm.generate([text_request(99, text="Write captions of drawing 11 of a lamp.")])[0]
    assert again.text == together[0].text and other.text != again.text


def test_temperature_zero_is_greedy_decoding(hf_engines):
    lm, _ = hf_engines
    req = text_request(5, temp=0.0, max_tokens=10)
    ours = lm.generate([req])[0]
    enc = lm.processor.apply_chat_template([req.messages], add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    ref = lm.net.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    ref_tokens = ref[0, enc["input_ids"].shape[1]:].tolist()
    if lm.tokenizer.eos_token_id in ref_tokens:
        ref_tokens = ref_tokens[:ref_tokens.index(lm.tokenizer.eos_token_id)]
    assert ours.text == lm.tokenizer.decode(ref_tokens, skip_special_tokens=True)


def test_gumbel_sampler_draws_from_the_tempered_nucleus():
    """Oracle: softmax(logits / T) restricted to the top-p nucleus, renormalised (computed independently)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    T, top_p, n = 0.8, 0.9, 6000
    p = torch.softmax(logits[0] / T, 0)
    order = torch.argsort(p, descending=True)
    keep, acc = [], 0.0
    for i in order.tolist():
        keep.append(i)
        acc += p[i].item()
        if acc >= top_p:
            break
    q = torch.zeros_like(p)
    q[keep] = p[keep] / p[keep].sum()
    counts = torch.zeros(6)
    sampler = SeededGumbelSampler(list(range(n)), T, top_p, "cpu")
    draws = sampler(torch.zeros(n, 1, dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    counts += torch.bincount(draws, minlength=6)
    for i in range(6):
        sd = math.sqrt(n * q[i].item() * (1 - q[i].item())) + 1e-9
        assert abs(counts[i].item() - n * q[i].item()) <= 4 * sd + 1, (i, counts.tolist(), (n * q).tolist())
    assert counts[[i for i in range(6) if i not in keep]].sum() == 0


# ---- HTTP ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_server(tiny_caption_models, tmp_path_factory):
    server = ModelServer(tmp_path_factory.mktemp("serve")).start()
    yield server
    server.stop()


def test_http_engine_through_a_real_server(model_server, tiny_caption_models):
    vlm = make_engine("http", str(tiny_caption_models["vlm"]), base_url=model_server.url, concurrency=3,
                      price_in=2.0, price_out=8.0)
    try:
        res = vlm.generate([vision_request(s) for s in range(5)])
        assert all(r.finish_reason in ("stop", "length") and r.text for r in res), res
        assert all(r.prompt_tokens > 16 and 0 < r.completion_tokens <= 12 for r in res)  # usage from the server
        st = vlm.stats
        assert st.requests == 5 and st.prompt_tokens == sum(r.prompt_tokens for r in res)
        assert st.cost == pytest.approx((st.prompt_tokens * 2.0 + st.completion_tokens * 8.0) / 1e6)
        assert 0 < st.generate_seconds
    finally:
        vlm.close()


def test_http_retries_honour_retry_after_and_back_off(model_server, tiny_caption_models, tmp_path):
    with FaultProxy(model_server.url, tmp_path, script="ok,429,503,close", retry_after=0.5).start() as proxy:
        lm = make_engine("http", str(tiny_caption_models["lm"]), base_url=proxy.url, concurrency=1, backoff=0.05)
        try:
            res = lm.generate([text_request(1, max_tokens=6)])[0]  # one request: the script is its attempts
        finally:
            lm.close()
        log = proxy.requests()
    assert res.finish_reason != "error" and res.retries == 3, res
    assert lm.stats.retries == 3 and lm.stats.retried_by_status == {"429": 1, "503": 1, "connection": 1}
    assert [e["answer"] for e in log] == [200, 429, 503, "close", 200]  # the probe, then the request's attempts
    assert log[2]["t0"] - log[1]["t1"] >= 0.45  # the endpoint's Retry-After: 0.5, not the 0.05 s backoff
    assert 0.04 <= log[3]["t0"] - log[2]["t1"] < 0.4  # backoff after the 2nd failure: 0.05 * 2 * [0.5, 1.5)
    assert 0.09 <= log[4]["t0"] - log[3]["t1"] < 0.6  # after the 3rd: 0.05 * 4 * [0.5, 1.5)
    assert backoff_delay(3, 7, 1.0, 60) == backoff_delay(3, 7, 1.0, 60)  # spread as a pure function
    assert 4.0 <= backoff_delay(3, 7, 1.0, 60) < 12.0 and backoff_delay(10, 7, 1.0, 5.0) < 7.5


def test_http_gives_up_after_the_retries_and_says_why(model_server, tiny_caption_models, tmp_path):
    with FaultProxy(model_server.url, tmp_path, script="ok,503,503,503,400").start() as proxy:
        lm = make_engine("http", str(tiny_caption_models["lm"]), base_url=proxy.url, concurrency=1, backoff=0.01,
                         max_retries=2)
        try:
            gave_up, refused, fine = (lm.generate([text_request(s, max_tokens=4)])[0] for s in range(3))
        finally:
            lm.close()
    assert gave_up.finish_reason == "error" and "gave up after 3 attempts" in gave_up.error and "503" in gave_up.error
    assert refused.finish_reason == "error" and refused.error.startswith("HTTP 400") and refused.retries == 0
    assert fine.finish_reason in ("stop", "length")


def test_http_concurrency_bound_and_rate_limit(model_server, tiny_caption_models, tmp_path):
    with FaultProxy(model_server.url, tmp_path).start() as proxy:
        lm = make_engine("http", str(tiny_caption_models["lm"]), base_url=proxy.url, concurrency=2)
        try:
            lm.generate([text_request(s, max_tokens=8) for s in range(6)])
        finally:
            lm.close()
        limited = make_engine("http", str(tiny_caption_models["lm"]), base_url=proxy.url, concurrency=4,
                              requests_per_minute=120)
        try:
            limited.generate([text_request(s, max_tokens=2) for s in range(6)])
        finally:
            limited.close()
        log = proxy.requests()
    first = log[1:7]  # after the probe
    assert max(e["in_flight"] for e in first) == 2
    rated = sorted(e["t0"] for e in log[8:])  # 120/min: 2 per second, a burst of at most 2
    assert len(rated) == 6 and rated[-1] - rated[0] >= 1.8


def test_http_credentials_and_model_names(model_server, tiny_caption_models, tmp_path, monkeypatch):
    with FaultProxy(model_server.url, tmp_path, auth="s3cret").start() as proxy:
        monkeypatch.delenv("PATENTCLIP_TEST_KEY", raising=False)
        with pytest.raises(EngineError, match=r"refused the credentials .*PATENTCLIP_TEST_KEY"):
            make_engine("http", str(tiny_caption_models["lm"]), base_url=proxy.url,
                        api_key_env="PATENTCLIP_TEST_KEY")
        monkeypatch.setenv("PATENTCLIP_TEST_KEY", "s3cret")
        ok = make_engine("http", str(tiny_caption_models["lm"]), base_url=proxy.url,
                         api_key_env="PATENTCLIP_TEST_KEY")
        assert ok.generate([text_request(1, max_tokens=3)])[0].finish_reason != "error"
        ok.close()
    with pytest.raises(EngineError, match=r"cannot serve model '/no/such/model'.*lists: .*lm"):
        make_engine("http", "/no/such/model", base_url=model_server.url, backoff=0.01)
    with pytest.raises(EngineError, match="cannot reach"):
        make_engine("http", "m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EngineError, match="unknown engine 'ollama'; engines: transformers, vllm, http"):
        make_engine("ollama", "m")


# ---- a caption run through HTTP endpoints ------------------------------------------------------------------------

def test_caption_run_through_http_endpoints_survives_faults(model_server, tiny_caption_models, tmp_path):
    import json

    from patentclip.shards.captioning.cli import main
    from patentclip.shards.synth import generate_synthetic_patents

    manifest = generate_synthetic_patents(tmp_path / "in", num_patents=12, num_classes=3, image_size=48,
                                          views=("front",), seed=2)
    out = tmp_path / "run"
    # the two engines' probes pass; the first batch's three captioner requests get 500s (no retries allowed)
    with FaultProxy(model_server.url, tmp_path, script="ok,ok,500,500,500").start() as proxy:
        args = ["run", "--manifest", str(manifest), "--out", str(out), "--limit", "6", "--no-progress",
                "--captioner-engine", "http", "--captioner-url", proxy.url, "--captioner-model",
                str(tiny_caption_models["vlm"]), "--llm-engine", "http", "--llm-url", proxy.url, "--llm-model",
                str(tiny_caption_models["lm"]), "--num-captions", "4", "--min-captions", "1", "--max-attempts", "1",
                "--captioner-max-tokens", "12", "--llm-max-tokens", "32", "--batch-size", "3", "--part-size", "6",
                "--concurrency", "3", "--max-retries", "0", "--llm-price", "1,4"]
        assert main(args) == 1  # three drawings failed in the engine: they stay open
        assert not (out / "captions.jsonl").exists()
        assert (out / "parts" / "part-000000.journal").read_bytes().count(b"\n") == 3
        assert main(args) == 0  # the rerun generates only them
    lines = [json.loads(ln) for ln in (out / "captions.jsonl").read_text().splitlines()]
    assert lines and all(p["engine"] == "http" for ln in lines for p in ln["provenance"])
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]  # <host>-<pid>-<time_ns>
    assert [r["drawings_generated"] for r in runs] == [3, 3] and runs[0]["open_errors"] == 3
    assert "HTTP 500" in runs[0]["open_error_examples"][0]["error"]
    report = json.loads((out / "caption_report.json").read_text())
    llm = report["totals"]["engines"]["http:" + str(tiny_caption_models["lm"])]
    assert llm["prompt_tokens"] > 0 and llm["cost"] == pytest.approx(
        (llm["prompt_tokens"] + 4 * llm["completion_tokens"]) / 1e6)
    assert report["totals"]["engines"]["http:" + str(tiny_caption_models["vlm"])]["errors"] == 3
