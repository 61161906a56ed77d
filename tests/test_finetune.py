"""Fine-tuning end to end through the CLI: a tiny saved "pretrained" GPT-2, a slice of Tiny
Shakespeare, keep-K + best checkpoints, TensorBoard scalars, and the HF export loading in
transformers with the same logits."""

import json
import os
import re
import struct

import jax
import numpy as np
import pytest

from gpt2jax.training import checkpoint
from gpt2jax.nn.model import GPT2, GPT2Config, init_params
from gpt2jax.weights.pretrained import save_pretrained
from helpers import REPO, run_cli

SCALARS = {"train/loss", "val/loss", "train/learning_rate", "train/grad_norm",
           "train/param_norm", "perf/tokens_per_sec", "perf/mfu"}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, data_dir):
    """Runs the README's fine-tuning command on tiny inputs; returns the workdir."""
    root = tmp_path_factory.mktemp("ft")
    cfg = GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2)
    save_pretrained(cfg, init_params(cfg, jax.random.key(0)), root / "pretrained")
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:12_000]
    (root / "train.txt").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    out = run_cli(["--mode=train", "--config=configs/finetune.py",
                   f"--config.init_from={root / 'pretrained'}",
                   f"--config.data.train_file={root / 'train.txt'}", f"--workdir={root / 'w'}",
                   "--config.train.batch_size=8", "--config.train.log_every=1",
                   "--config.train.eval_every=2", "--config.train.eval_batches=1",
                   "--config.checkpoint.save_every=2", "--config.train.progress_bar=False"],
                  env=env)  # asserts exit status 0
    assert "done: step" in out.stdout
    return root / "w"


def _records(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_finetune_runs_and_keeps_last_k_plus_best(finetuned):
    records = _records(finetuned)
    train = [r for r in records if "loss" in r]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    last = train[-1]["step"]
    assert last >= 6 and [r["step"] for r in train] == list(range(1, last + 1))
    saved = sorted(set(range(2, last + 1, 2)) | {last})  # save_every=2 and the last step
    best = min(saved, key=lambda s: val[s])
    kept = checkpoint.Checkpointer(finetuned).all_steps()
    assert sorted(kept) == sorted(set(saved[-2:]) | {best})  # keep=2 + best by val loss
    assert val[last] < val[2]  # fine-tuning helps on held-out text


def test_exported_hf_model_loads_in_transformers(finetuned):
    import torch
    from transformers import GPT2LMHeadModel

    cfg, params, tok = checkpoint.load_params_for_inference(finetuned)
    assert tok["name"] == "gpt2"
    model = GPT2LMHeadModel.from_pretrained(str(finetuned / "hf")).eval()
    ids = np.array([[464, 2068, 7586, 21831, 18045, 625, 262]], np.int32)
    with torch.no_grad():
        theirs = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(GPT2(cfg).apply({"params": params}, ids))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def _event_scalars(path) -> set:
    """Tags of scalar summaries in a TensorBoard event file (TFRecord of Event protos)."""
    from tensorboardX.proto import event_pb2

    tags, data = set(), path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        tags.update(v.tag for v in event.summary.value if v.HasField("simple_value"))
    return tags


def test_tensorboard_holds_the_scalars(finetuned):
    files = list((finetuned / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    assert SCALARS <= _event_scalars(files[0])


def test_readme_finetune_command_fits_a_4kb_file_and_beats_step_0(tmp_path, data_dir):
    # Before train.fit_to_data, a 4.4 KB train.txt stopped at once: "Validation data from
    # last 0.1 ... has 123 tokens, fewer than one block (129)".
    cfg = GPT2Config(n_positions=256, n_embd=32, n_layer=2, n_head=2)
    save_pretrained(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "tiny-gpt2")
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:4400]
    (tmp_path / "train.txt").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = run_cli(["--mode=train", "--config=" + str(REPO / "configs/finetune.py"),
                   "--config.init_from=tiny-gpt2", "--config.data.train_file=train.txt",
                   "--workdir=ft"], env=env, cwd=tmp_path)
    assert "fit_to_data: train.txt holds 1,225 tokens; block_size 128 -> 64" in out.stdout
    records = _records(tmp_path / "ft")
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    train_steps = [r["step"] for r in records if "loss" in r]
    assert 0 in val and "step 0: before training, val loss" in out.stdout
    assert len(train_steps) >= 3 * 8  # 3 epochs of at least MIN_STEPS_PER_EPOCH steps
    assert val[max(val)] < val[0]  # the fine-tuned model beats the pretrained one
    # quiet by default: no absl/Orbax INFO lines (a run wrote ~465 KB of them to stderr), one
    # console line per log_every steps, every step in metrics.jsonl
    assert not re.search(r"^I\d{4} ", out.stderr, re.M), out.stderr[:2000]
    logged = re.findall(r"^step (\d+): loss ", out.stdout, re.M)
    assert logged == [str(s) for s in train_steps if s % 10 == 0] and len(logged) >= 2
    assert train_steps == list(range(1, len(train_steps) + 1))
