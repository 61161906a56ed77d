"""lm-eval tasks during training (`config.train.lm_eval.tasks`): logged at each evaluation
to metrics.jsonl and TensorBoard, equal to the backend run afterwards on the exported
weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from configs import shakespeare_char
from gpt2jax.eval import harness
from gpt2jax.training.loop import train_and_evaluate

TASKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "lm_eval_tasks"


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar in the run's TensorBoard event file (TFRecord of Events)."""
    (path,) = folder.glob("events.out.tfevents.*")
    out, data, pos = [], path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


def _config(data_dir):
    c = shakespeare_char.get_config("cpu")
    c.model.update(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    c.data.update(tokenizer="gpt2", prefetch=0)
    c.train.update(batch_size=8, block_size=32, num_steps=4, lr_decay_steps=4, warmup_steps=1,
                   log_every=1, eval_every=2, eval_batches=1, sample_tokens=0,
                   progress_bar=False, peak_flops=1e9)
    c.train.lm_eval.update(tasks="lambada_openai_local", limit=4, batch_size=4,
                           data_dir=str(data_dir))
    c.checkpoint.update(save_every=4, keep=1, keep_best=0)
    return c


def test_lm_eval_tasks_are_logged_at_each_evaluation(data_dir, tmp_path):
    workdir = tmp_path / "run"
    train_and_evaluate(_config(data_dir), workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in records if "lm_eval/lambada_openai_local/acc" in r}
    assert sorted(logged) == [2, 4]
    assert logged[2]["lm_eval/lambada_openai_local/perplexity"] \
        != logged[4]["lm_eval/lambada_openai_local/perplexity"]  # the params changed

    scalars = _scalars(workdir / "tensorboard", "lm_eval/lambada_openai_local/perplexity")
    assert [step for step, _ in scalars] == [2, 4]
    assert scalars[-1][1] == pytest.approx(logged[4]["lm_eval/lambada_openai_local/perplexity"],
                                           rel=1e-6)  # float32 in the event file

    manager = harness.task_manager(str(TASKS_DIR), data_dir, include_defaults=False)
    lm = harness.GPT2JaxLM(pretrained=str(workdir / "hf"), batch_size=4, progress=False)
    rows = harness.result_rows(harness.evaluate(lm, ["lambada_openai_local"], manager, limit=4))
    for r in rows:
        key = f"lm_eval/{r['task']}/{r['metric']}"
        assert logged[4][key] == pytest.approx(r["value"], rel=1e-4), key
