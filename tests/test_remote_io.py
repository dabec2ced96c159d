"""The one retry rule and the one "is this remote" rule (plugins/remote_io.py), and that their users call them.
(The rule against a real S3 outage: test_sampling_and_resume.py, test_shards_s3.py, test_cluster.py.)"""
import inspect
import logging
from pathlib import Path

import pytest

from patentclip.plugins import remote_io
from patentclip.plugins.remote_io import DEFAULT_RETRIES, ShardReadError, io_retries, is_remote, retry


def flaky(failures, exc=ConnectionError):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= failures:
            raise exc(f"attempt {len(calls)}")
        return "ok"
    return fn, calls


def test_retries_then_succeeds_with_exponential_waits(monkeypatch, caplog):
    waits = []
    monkeypatch.setattr(remote_io.time, "sleep", waits.append)
    fn, calls = flaky(3)
    with caplog.at_level(logging.WARNING):
        assert retry(fn, "read x", retries=3, backoff=0.5) == "ok"
    assert len(calls) == 4 and waits == [0.5, 1.0, 2.0]
    assert "read x failed (ConnectionError: attempt 1); retry 1/3 in 0.5 s" in caplog.text


def test_gives_up_after_the_retries_with_the_callers_error(monkeypatch):
    waits = []
    monkeypatch.setattr(remote_io.time, "sleep", waits.append)
    fn, calls = flaky(100)
    with pytest.raises(ShardReadError, match=r"^s3://b/k: read failed after 2 retries: ConnectionError: attempt 3$"):
        retry(fn, "s3://b/k: read", retries=2, backoff=1.0, error=ShardReadError)
    assert len(calls) == 3 and waits == [1.0, 2.0]
    fn, calls = flaky(100)
    waits.clear()
    with pytest.raises(OSError):
        retry(fn, "x", retries=9, backoff=4.0)
    assert waits[:4] == [4.0, 8.0, 16.0, remote_io.MAX_DELAY] and max(waits) == remote_io.MAX_DELAY


def test_not_retried_errors_pass_through(monkeypatch):
    monkeypatch.setattr(remote_io.time, "sleep", lambda s: None)
    fn, calls = flaky(5, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        retry(fn, "x", retries=3)
    assert len(calls) == 1
    fn, calls = flaky(5, PermissionError)
    with pytest.raises(PermissionError):
        retry(fn, "x", retries=3, give_up=(FileNotFoundError, PermissionError))
    fn, calls = flaky(2, FileNotFoundError)
    assert retry(fn, "x", retries=3, give_up=()) == "ok" and len(calls) == 3


def test_one_default_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("PATENTCLIP_IO_RETRIES", raising=False)
    assert io_retries() == DEFAULT_RETRIES == 8
    monkeypatch.setenv("PATENTCLIP_IO_RETRIES", "2")
    monkeypatch.setattr(remote_io.time, "sleep", lambda s: None)
    fn, calls = flaky(100)
    with pytest.raises(OSError, match="after 2 retries"):
        retry(fn, "x")
    assert len(calls) == 3
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "PATENTCLIP_IO_RETRIES" in readme and f"default {DEFAULT_RETRIES}" in readme


def test_is_remote():
    for p in ("s3://b/k", "gs://b", "memory://x/y", "simplecache::s3://b/k"):
        assert is_remote(p), p
    for p in ("/a/b", "a/b.tar", "file:///a/b", Path("/x"), None, "", "local-dir"):
        assert not is_remote(p), p


def test_users_share_the_rules():
    """No copy of either rule in the builder, inspect, checkpoints, the checkpoint reader or export."""
    from patentclip.evaluation import export
    from patentclip.launch import checkpoint, checkpoint_format
    from patentclip.shards import build, output
    from patentclip.shards import inspect as shard_inspect

    for mod in (build, output, shard_inspect, checkpoint, checkpoint_format, export):
        src = inspect.getsource(mod)
        assert '"://" in' not in src and "time.sleep(backoff" not in src and "2 ** attempt" not in src, mod.__name__
    for mod in (build, output, shard_inspect, checkpoint, checkpoint_format):  # export reads through the reader
        assert mod.is_remote is is_remote, mod.__name__
    for mod in (build, output):
        assert "PATENTCLIP_IO_RETRIES\", \"" not in inspect.getsource(mod)
