"""training/metric_writers.py: one record reaches metrics.jsonl, TensorBoard and the log; the
TensorBoard sink does not import PyTorch."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from absl import logging
from tensorboardX.proto import event_pb2

from gpt2jax.training import metric_writers


def _events(folder: Path) -> list:
    """The Events of the one TensorBoard event file in `folder` (TFRecord framing)."""
    (path,) = folder.glob("events.out.tfevents.*")
    return _events_of(path)


def _events_of(path: Path) -> list:
    """The Events of one TensorBoard event file (TFRecord framing)."""
    out, data, pos = [], path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return out


def test_a_record_reaches_every_sink(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(logging, "info", lambda fmt, *a: logged.append(fmt % a))
    writer = metric_writers.create_writer(tmp_path, main_process=True)
    writer.write_scalars(5, {"loss": 2.5, "tokens_per_sec": 1000.0, "lm_eval/t/acc": 0.25})
    writer.write_scalars(6, {"val_loss": 2.0})
    writer.write_texts(6, {"sample": "ROMEO:"})
    writer.close()

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 5, "loss": 2.5, "tokens_per_sec": 1000.0, "lm_eval/t/acc": 0.25},
                     {"step": 6, "val_loss": 2.0}]
    scalars = {(e.step, v.tag): v.simple_value for e in _events(tmp_path / "tensorboard")
               for v in e.summary.value if v.HasField("simple_value")}
    assert scalars == {(5, "train/loss"): 2.5, (5, "perf/tokens_per_sec"): 1000.0,
                       (5, "lm_eval/t/acc"): 0.25, (6, "val/loss"): 2.0}
    texts = [v.tag for e in _events(tmp_path / "tensorboard") for v in e.summary.value
             if not v.HasField("simple_value")]
    assert texts and all(t.startswith("sample") for t in texts)
    assert logged[0] == "[5] loss=2.5, tokens_per_sec=1000, lm_eval/t/acc=0.25"
    assert "[6] sample: ROMEO:" in logged


def test_other_processes_write_nothing(tmp_path):
    writer = metric_writers.create_writer(tmp_path, main_process=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_jsonl_appends_on_resume(tmp_path):
    for step in (1, 2):
        w = metric_writers.JsonlWriter(tmp_path / "metrics.jsonl")
        w.write_scalars(step, {"loss": float(step)})
        w.close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_a_resumed_run_records_each_step_once(tmp_path):
    """A run resumed (or rolled back) to checkpoint 2 runs steps 3.. again: their earlier
    records, and a line cut short by a kill, go; TensorBoard purges them alike."""
    path = tmp_path / "metrics.jsonl"
    w = metric_writers.create_writer(tmp_path, main_process=True, start_step=0)
    for step in (1, 2, 3, 4):
        w.write_scalars(step, {"loss": float(step)})
    w.close()
    with open(path, "a") as f:
        f.write('{"step": 5, "lo')  # killed mid-line
    w = metric_writers.create_writer(tmp_path, main_process=True, start_step=2)
    for step in (3, 4, 5):
        w.write_scalars(step, {"loss": 10.0 + step})
    w.close()
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [
        (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    events = [e for f in sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
              for e in _events_of(f)]
    assert any(e.session_log.status == e.session_log.START and e.step == 3 for e in events)


@pytest.mark.parametrize("torch_first", [False, True])
def test_tensorboard_sink_does_not_import_torch(tmp_path, torch_first):
    """tensorboardX's writer imports torch when it is installed (2-4 s of every training
    process); the sink keeps it out, and a later `import torch` still works."""
    code = (
        "import sys\n"
        + ("import torch\n" if torch_first else "")
        + "from gpt2jax.training import metric_writers\n"
        f"w = metric_writers.TensorBoardWriter({str(tmp_path)!r})\n"
        "w.write_scalars(1, {'loss': 1.0}); w.close()\n"
        "print('torch' in sys.modules)\n"
        "import torch; print(torch.ones(2).sum().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(torch_first), "2.0"]
