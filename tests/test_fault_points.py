"""plugins/fault_points.py: a process is held exactly at the armed point and name, let go when the test deletes the
hold file, never held elsewhere, and never forever."""
import logging
import threading
import time

import pytest

from patentclip.plugins import fault_points


def _hold_in_thread(point, name):
    t = threading.Thread(target=fault_points.hold, args=(point, name), daemon=True)
    t.start()
    return t


@pytest.fixture(autouse=True)
def short_max_hold(monkeypatch):
    monkeypatch.setattr(fault_points, "MAX_HOLD", 5.0)  # a point that holds by mistake fails the test in seconds


def test_unarmed_points_pass(monkeypatch, tmp_path):
    monkeypatch.delenv(fault_points.HOLD_ENV, raising=False)
    t0 = time.monotonic()
    fault_points.hold("upload", "s3://b/ck/deepspeed/step_2/mp_rank_00_model_states.pt")
    assert time.monotonic() - t0 < 1.0
    assert list(tmp_path.iterdir()) == []


def test_held_at_the_armed_point_until_the_file_is_deleted(monkeypatch, tmp_path):
    gate = tmp_path / "hold"
    monkeypatch.setenv(*fault_points.arm(gate, "upload", "step_2/model.pt").popitem())
    t = _hold_in_thread("upload", "s3://b/ck/deepspeed/step_2/model.pt")
    fault_points.wait_reached(gate, 10, alive=t.is_alive)
    assert fault_points.reached(gate)
    time.sleep(0.3)
    assert t.is_alive()  # still held
    gate.unlink()
    t.join(2)
    assert not t.is_alive()


@pytest.mark.parametrize("point,name", [
    ("upload", "s3://b/ck/deepspeed/step_12/model.pt"),  # another file
    ("upload", "s3://b/ck/deepspeed/step_2/model.pt.bak"),  # the suffix must end the name
    ("shard", "s3://b/ck/deepspeed/step_2/model.pt"),  # another point
])
def test_other_points_and_names_pass(monkeypatch, tmp_path, point, name):
    gate = tmp_path / "hold"
    monkeypatch.setenv(*fault_points.arm(gate, "upload", "step_2/model.pt").popitem())
    t0 = time.monotonic()
    fault_points.hold(point, name)
    assert time.monotonic() - t0 < 1.0 and not fault_points.reached(gate)


def test_a_hold_file_left_behind_never_holds_forever(monkeypatch, tmp_path, caplog):
    gate = tmp_path / "hold"
    monkeypatch.setenv(*fault_points.arm(gate, "shard", "train/train-000002.tar").popitem())
    monkeypatch.setattr(fault_points, "MAX_HOLD", 0.3)
    with caplog.at_level(logging.WARNING):
        fault_points.hold("shard", "train/train-000002.tar")
    assert gate.exists() and "going on" in caplog.text and "train/train-000002.tar" in caplog.text


def test_waiting_for_a_point_fails_clearly(tmp_path):
    gate = tmp_path / "hold"
    fault_points.arm(gate, "upload", "x")
    with pytest.raises(RuntimeError, match="ended before the fault point"):
        fault_points.wait_reached(gate, 10, alive=lambda: False)
    with pytest.raises(TimeoutError, match="within 0 s"):
        fault_points.wait_reached(gate, 0.2)
