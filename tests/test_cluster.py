"""Running for weeks on a cluster: a real single-node SLURM cluster (slurm-wlm + munge) and a real S3 server
(SeaweedFS), both started by the suite. sbatch of slurm/train_cpu.sh with 2 tasks from S3 shards to S3
checkpoints; preemption (warning signal -> checkpoint -> requeue -> resume) with a loss trace equal to an
uninterrupted run; kill -9 of a rank mid-run and mid-upload; an S3 outage during a checkpoint upload."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli
from patentclip.plugins import fault_points

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm"))).up()
    yield cluster
    cluster.down()


@pytest.fixture(scope="module")
def s3_train_shards(s3_server, synthetic_shards):
    fs = s3_server.filesystem()
    s3_server.make_bucket("cluster")
    fs.put(str(synthetic_shards["train_dir"]), "cluster/shards/train", recursive=True)
    last = sorted(p.name for p in synthetic_shards["train_dir"].glob("*.tar"))[-1].split("-")[1].split(".")[0]
    return f"s3://cluster/shards/train/train-{{000000..{last}}}.tar"


def train_args(train, logs, name, ckpt, epochs=EPOCHS, *extra):
    return ["--train-data", train, "--model", "patentclip-tiny", "--batch-size", "8", "--epochs", str(epochs),
            "--lr", "1e-3", "--warmup", "5", "--workers", "1", "--logs", str(logs), "--name", name, "--seed", "0",
            "--checkpoint-dir", ckpt, "--log-every-n-steps", "5", "--precision", "fp32", *extra]


def slurm_env(s3_server, train, logs, name, ckpt, extra=""):
    return {**s3_server.env(), "PATENTCLIP_HOME": str(REPO), "PATENTCLIP_PYTHON": sys.executable,
            "PATENTCLIP_TRAIN_DATA": train, "PATENTCLIP_LOGS": str(logs), "PATENTCLIP_NAME": name,
            "PATENTCLIP_CHECKPOINT_DIR": ckpt, "PATENTCLIP_EPOCHS": str(EPOCHS), "PATENTCLIP_EXTRA_ARGS": extra}


@pytest.fixture(scope="module")
def reference_trace(s3_server, s3_train_shards, tmp_path_factory):
    """An uninterrupted 2-rank run (local launcher) with the same data, seed and flags as the SLURM jobs."""
    logs = tmp_path_factory.mktemp("ref")
    r = run_cli("patentclip.launch.train", "--nproc-per-node", "2",
                *train_args(s3_train_shards, logs, "ref", str(logs / "ck")), env=s3_server.env())
    assert r.returncode == 0, r.stderr[-3000:]
    return {s["step"]: s["loss"] for s in read_jsonl(logs / "ref" / "train_steps.jsonl")}


def wait_job(cluster, job_id, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cluster.scontrol("show", "job", job_id)
        state = out.split("JobState=")[1].split()[0] if "JobState=" in out else "?"
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state, out
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still {state} after {timeout} s")


def test_sbatch_trains_from_s3_and_checkpoints_to_s3(slurm_cluster, s3_server, s3_train_shards, reference_trace,
                                                      tmp_path):
    ckpt = "s3://cluster/ckpt/plain"
    env = slurm_env(s3_server, s3_train_shards, tmp_path / "logs", "plain", ckpt)
    r = slurm_cluster.sbatch("--wait", "-D", tmp_path, "-o", tmp_path / "job.out", REPO / "slurm" / "train_cpu.sh",
                             env_extra=env)
    out = (tmp_path / "job.out").read_text()
    assert r.returncode == 0, out[-4000:]
    assert "2 task(s)" in out and "world size 2" in out
    fs = s3_server.filesystem()
    assert fs.cat("cluster/ckpt/plain/deepspeed/latest").decode() == f"epoch_{EPOCHS}"
    assert fs.exists(f"cluster/ckpt/plain/epoch_{EPOCHS}.pt")
    files = {p.split("/")[-1] for p in fs.ls(f"cluster/ckpt/plain/deepspeed/epoch_{EPOCHS}")}
    assert {"meta.json", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    trace = {s["step"]: s["loss"] for s in read_jsonl(tmp_path / "logs" / "plain" / "train_steps.jsonl")}
    assert trace == reference_trace  # SLURM launch = local launch, bit for bit


def test_preemption_checkpoints_requeues_resumes_and_matches_uninterrupted_run(
        slurm_cluster, s3_server, s3_train_shards, reference_trace, tmp_path):
    ckpt = "s3://cluster/ckpt/preempt"
    logs = tmp_path / "logs"
    env = slurm_env(s3_server, s3_train_shards, logs, "preempt", ckpt)
    r = slurm_cluster.sbatch("--parsable", "-D", tmp_path, "-o", tmp_path / "job.out",
                             REPO / "slurm" / "train_cpu.sh", env_extra=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    steps_file = logs / "preempt" / "train_steps.jsonl"
    total = len(reference_trace)
    deadline = time.time() + 300
    while time.time() < deadline:
        if steps_file.exists() and len(read_jsonl(steps_file)) >= total // 3:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the job did not start training:\n" + (tmp_path / "job.out").read_text()[-3000:])
    subprocess.run(["scancel", "--signal=USR1", job], env={**os.environ, **slurm_cluster.env()}, check=True)
    state, info = wait_job(slurm_cluster, job, timeout=600)
    out = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED", out[-4000:]
    assert "Restarts=1" in info and "requeueing job" in out and "restart 1" in out
    assert "received SIGUSR1" in out and "Resumed DeepSpeed checkpoint" in out
    steps = read_jsonl(steps_file)
    assert [s["step"] for s in steps] == sorted(reference_trace)  # no step lost, none repeated
    assert {s["step"]: s["loss"] for s in steps} == reference_trace  # fp32 CPU: bit-identical


def _rank_pids(launcher_pid):
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split()
    kids = []
    for pid in out:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "patentclip.launch.train" in cmd:
            kids.append(int(pid))
    return kids


def _wait_held(p, gate):
    try:
        fault_points.wait_reached(gate, 300, alive=lambda: p.poll() is None)
    except (RuntimeError, TimeoutError) as exc:
        p.kill()
        pytest.fail(f"{exc}:\n" + p.communicate()[0][-3000:])


def _launch(args, env):
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "patentclip.launch.train", "--nproc-per-node", "2", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full)


def test_kill_9_mid_run_and_mid_upload_resumes_from_last_complete_checkpoint(s3_server, s3_train_shards,
                                                                             reference_trace, tmp_path):
    fs = s3_server.filesystem()
    ckpt = "s3://cluster/ckpt/crash"
    logs = tmp_path / "logs"
    args = train_args(s3_train_shards, logs, "crash", ckpt, EPOCHS, "--save-every-n-steps", "6", "--resume", "latest")
    # 1) kill -9 a rank in the middle of uploading the second checkpoint: rank 0 is held by a fault point right
    # after uploading step_12's model states (plugins/fault_points.py), rank 1 is killed, then rank 0 goes on
    gate = tmp_path / "hold"
    p = _launch(args, {**s3_server.env(), **fault_points.arm(gate, "upload", "step_12/mp_rank_00_model_states.pt")})
    _wait_held(p, gate)
    assert fs.exists("cluster/ckpt/crash/deepspeed/step_12/mp_rank_00_model_states.pt")
    os.kill(_rank_pids(p.pid)[-1], signal.SIGKILL)
    gate.unlink()
    out = p.communicate(timeout=120)[0]
    assert p.returncode != 0
    assert fs.cat("cluster/ckpt/crash/deepspeed/latest").decode() == "step_6"  # step_12 half-uploaded: not named
    # 2) resume: from step_6, not from the half-written step_12; then kill -9 a rank mid-run (no checkpoint then)
    steps_file = logs / "crash" / "train_steps.jsonl"
    before = len(read_jsonl(steps_file)) if steps_file.exists() else 0
    p = _launch(args, s3_server.env())
    deadline = time.time() + 300
    while time.time() < deadline:
        new = read_jsonl(steps_file)[before:] if steps_file.exists() else []
        if new and new[-1]["step"] >= 9:
            break
        time.sleep(0.2)
    else:
        p.kill()
        pytest.fail("the resumed run did not reach step 9:\n" + p.communicate()[0][-3000:])
    os.kill(_rank_pids(p.pid)[0], signal.SIGKILL)
    out = p.communicate(timeout=120)[0]
    assert p.returncode != 0
    # the newest complete checkpoint, step_6 (its staged local copy or the S3 one: the same files), not step_12
    assert "deepspeed/step_6 (epoch 0, step 6)" in out and "Resumed DeepSpeed checkpoint" in out
    # 3) the next run resumes from the newest complete checkpoint and finishes with the uninterrupted losses
    latest = fs.cat("cluster/ckpt/crash/deepspeed/latest").decode()
    p = _launch(args, s3_server.env())
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    meta = json.loads(fs.cat(f"cluster/ckpt/crash/deepspeed/{latest}/meta.json"))
    assert "Resumed DeepSpeed checkpoint" in out and f"deepspeed/{latest} (epoch {meta['epoch']}" in out
    steps = read_jsonl(steps_file)
    last_run = [s for s in steps if s["step"] >= meta["step"]][-(len(reference_trace) - meta["step"]):]
    assert [s["step"] for s in last_run] == list(range(meta["step"], len(reference_trace)))
    assert all(s["loss"] == reference_trace[s["step"]] for s in last_run)


def test_s3_outage_during_upload_fails_loudly_without_moving_latest(s3_server, s3_train_shards, tmp_path):
    fs = s3_server.filesystem()
    ckpt = "s3://cluster/ckpt/outage"
    logs = tmp_path / "logs"
    args = train_args(s3_train_shards, logs, "outage", ckpt, EPOCHS, "--save-every-n-steps", "6")
    gate = tmp_path / "hold"  # the store goes down while rank 0 is held after step_12's first upload
    env = {**s3_server.env(), **fault_points.arm(gate, "upload", "step_12/mp_rank_00_model_states.pt"),
           "PATENTCLIP_UPLOAD_RETRIES": "2", "PATENTCLIP_IO_RETRIES": "2"}
    p = _launch(args, env)
    _wait_held(p, gate)
    s3_server.stop()
    gate.unlink()
    try:
        out = p.communicate(timeout=180)[0]
    finally:
        s3_server.start()
    assert p.returncode != 0
    assert "step_12" in out and "was not committed" in out and "retries" in out
    assert fs.cat("cluster/ckpt/outage/deepspeed/latest").decode() == "step_6"
