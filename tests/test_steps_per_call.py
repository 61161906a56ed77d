"""train.steps_per_call: n optimizer steps in one jitted call (`Trainer.train_steps`, a
`lax.scan` over n stacked batches) are the same updates, bit for bit, as n `train_step` calls;
the loop still logs, evaluates, saves, resumes and stops on divergence at every step as with
one step per call."""

import json
import shutil

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import common, shakespeare_char
from gpt2jax.errors import ConfigError
from gpt2jax.nn.model import GPT2Config
from gpt2jax.parallel import sharding
from gpt2jax.training import step as train
from gpt2jax.training.checkpoint import Checkpointer, load_params_for_inference
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.training.meter import StepMetrics


def _batches(n: int, b: int = 8, t: int = 16, vocab: int = 64) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (n, b, t + 1)).astype(np.int32)
    w = np.ones((b, t), np.float32)
    w[0, 5:] = 0.0  # uneven token counts: the loss is token-weighted
    return [{"inputs": r[:, :-1], "targets": r[:, 1:], "weights": w} for r in x]


def test_train_steps_equal_train_step_calls():
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=4,
                     embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)  # dropout: rng per step
    tc = train.TrainConfig(batch_size=8, grad_accum_steps=2, block_size=16, num_steps=10,
                           learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=1,
                           lr_decay_steps=10, schedule="cosine", weight_decay=0.1,
                           decay_embeddings=False, beta1=0.9, beta2=0.95, eps=1e-8,
                           grad_clip=1.0)
    mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])  # the loop test below splits
    trainer = train.Trainer(cfg, tc, mesh, sharding.rules(common.mesh_config()))
    batches = _batches(3)
    one = trainer.init(0)
    singles = []
    for b in batches:
        one, m = trainer.train_step(one, trainer.put_batch(b))
        singles.append(jax.device_get(m))
    many, stacked = trainer.train_steps(trainer.init(0), trainer.put_steps(batches))
    stacked = jax.device_get(stacked)
    assert stacked["loss_sum"].shape == (3,)
    for i, m in enumerate(singles):
        for k, v in m.items():
            assert stacked[k][i] == v, (i, k)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert trainer.compile_count() == 2


@pytest.fixture
def text_file(tmp_path, data_dir):
    path = tmp_path / "train.txt"
    path.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    return path


@pytest.fixture
def calls(monkeypatch):
    """The n of every `Trainer.train_steps` call (the path under test is taken)."""
    seen, original = [], train.Trainer.train_steps

    def counted(self, state, batches):
        seen.append(int(batches["inputs"].shape[0]))
        return original(self, state, batches)

    monkeypatch.setattr(train.Trainer, "train_steps", counted)
    return seen


def _config(text_file, steps: int, per_call: int) -> ConfigDict:
    """shakespeare_char:cpu shrunk to seconds, on the default mesh (8 CPU devices); logs
    every 3 steps, evaluates and saves every 6."""
    c = shakespeare_char.get_config("cpu")
    c.model.update(n_layer=1, n_head=2, n_embd=32, n_positions=32)
    c.data.update(train_file=str(text_file), prefetch=0)
    c.train.update(batch_size=8, block_size=32, num_steps=steps, warmup_steps=2, log_every=3,
                   eval_every=6, eval_batches=2, sample_tokens=0, export_hf=False,
                   progress_bar=False, peak_flops=1e9, steps_per_call=per_call)
    c.checkpoint.update(save_every=6, keep=5, keep_best=0)
    return c


def _records(lines: list[str]) -> tuple[dict, dict]:
    """metrics.jsonl lines -> {step: train record without timings}, {step: val loss}."""
    train_recs, val = {}, {}
    for r in map(json.loads, lines):
        if "loss" in r:
            train_recs[r["step"]] = {k: v for k, v in r.items()
                                     if k not in ("tokens_per_sec", "mfu")}
        if "val_loss" in r:
            val[r["step"]] = r["val_loss"]
    return train_recs, val


def test_loop_resumed_with_steps_per_call_equals_one_step_per_call(tmp_path, text_file, calls):
    one = tmp_path / "one"
    train_and_evaluate(_config(text_file, 14, per_call=1), one)  # checkpoints 6, 12, 14
    assert calls == []
    three = tmp_path / "three"
    shutil.copytree(one, three)
    c = _config(text_file, 14, per_call=3)
    c.checkpoint.restore_step = 6  # resume the copy at step 6: 7-9, 10-12 (save), 13, 14
    train_and_evaluate(c, three)
    assert calls == [3, 3]
    want, want_val = _records((one / "metrics.jsonl").read_text().splitlines())
    lines = (three / "metrics.jsonl").read_text().splitlines()
    # rolled back to 6: the copied records of 7.. are dropped, each step is recorded once
    assert [r["step"] for r in map(json.loads, lines) if "loss" in r] == list(range(1, 15))
    got, got_val = _records(lines)
    got = {s: r for s, r in got.items() if s > 6}  # the resumed run's
    assert sorted(got) == list(range(7, 15))  # a record for every step, the same numbers
    assert got == {s: want[s] for s in got}
    assert got_val[12] == want_val[12] and got_val[14] == want_val[14]
    assert Checkpointer(three, 5, 0, False).all_steps()[-2:] == [12, 14]
    _, p_one, _ = load_params_for_inference(one)
    _, p_three, _ = load_params_for_inference(three)
    for a, b in zip(jax.tree.leaves(p_one), jax.tree.leaves(p_three)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_divergence_inside_a_call_names_its_step(tmp_path):
    ok = {"loss_sum": 2.0, "weight_sum": 1.0, "correct_sum": 0.0, "grad_norm": 1.0,
          "param_norm": 1.0, "learning_rate": 1e-3, "update_finite": True}
    stacked = {k: np.array([v, v, v]) for k, v in ok.items()}
    stacked["update_finite"] = np.array([True, False, True])  # step 5 of steps 4-6
    steps = StepMetrics(Checkpointer(tmp_path, 2, 0, False))
    steps.add(3, ok)
    steps.add_steps(range(4, 7), stacked)
    with pytest.raises(train.TrainingDivergedError, match="update of step 5 made"):
        steps.fetch()
    steps.add_steps(range(7, 9), {k: v[:2] for k, v in stacked.items()}
                    | {"update_finite": np.array([True, True])})
    assert [s for s, _ in steps.fetch()] == [7, 8]


def test_steps_per_call_must_be_positive(tmp_path, text_file):
    with pytest.raises(ConfigError, match="steps_per_call"):
        train_and_evaluate(_config(text_file, 6, per_call=0), tmp_path / "w")
