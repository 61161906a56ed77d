"""A training run of every attention variant ends well: exit 0, its checkpoint saved, and the
HF export (on by default) skipped with one line saying why, because the HF GPT-2 layout
cannot hold the variant. Before, such a run saved its checkpoint and then exited 2 with
"The HF GPT-2 layout cannot represent {...}" from the export."""

from __future__ import annotations

import pytest

from configs import shakespeare_char
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.weights.loader import load_model
from helpers import cli_env, run_cli

# Every config.model override that the HF GPT-2 layout cannot represent (exactly).
VARIANTS = {
    "mqa": dict(n_kv_heads=1),
    "gqa": dict(n_kv_heads=2),
    "rope": dict(position="rope"),
    "alibi": dict(position="alibi"),
    "nope": dict(position="none"),
    "sinusoidal": dict(position="sinusoidal"),
    "window": dict(sliding_window=8),
    "post_ln": dict(norm_position="post"),
    "qk_norm": dict(qk_norm=True),
}
# shakespeare_char:cpu shrunk to one step of a 1-layer, 32-wide model on 20,000 characters.
SHRINK = dict(n_layer=1, n_head=4, n_embd=32, n_positions=32)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    return path


def _config(text_file, **model):
    c = shakespeare_char.get_config("cpu")
    c.model.update(SHRINK, **model)
    c.data.train_file, c.data.prefetch = str(text_file), 0
    c.train.update(batch_size=8, block_size=32, num_steps=1, warmup_steps=0, lr_decay_steps=1,
                   eval_every=0, sample_tokens=0, progress_bar=False, peak_flops=1e9,
                   steps_per_call=1)
    assert c.train.export_hf  # the default: what a user's run does
    c.checkpoint.update(save_every=0, keep_best=0, async_save=False)
    return c


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_run_skips_the_hf_export_with_one_line(name, text_file, tmp_path, capsys):
    workdir = tmp_path / name
    out = train_and_evaluate(_config(text_file, **VARIANTS[name]), workdir)
    assert out["step"] == 1
    printed = [line for line in capsys.readouterr().out.splitlines() if "export_hf" in line]
    assert len(printed) == 1, printed
    key = next(iter(VARIANTS[name]))
    assert printed[0].startswith("export_hf skipped: the HF GPT-2 layout cannot represent {")
    assert f"'{key}'" in printed[0] and f"--config.init_from={workdir}" in printed[0]
    assert not (workdir / "hf").exists()
    cfg, _, _ = load_model(workdir)  # the checkpoint the line points to holds the variant
    assert getattr(cfg, key) == VARIANTS[name][key]


def test_plain_gpt2_run_still_exports(text_file, tmp_path, capsys):
    out = train_and_evaluate(_config(text_file), tmp_path / "w")
    assert out["step"] == 1 and (tmp_path / "w" / "hf" / "model.safetensors").is_file()
    assert "export_hf skipped" not in capsys.readouterr().out


def test_alibi_run_from_the_command_line_exits_0(text_file, tmp_path):
    """The command of the issue (`--config.model.position=alibi`), shrunk to one step."""
    args = ["--mode=train", "--config=configs/shakespeare_char.py:cpu",
            "--config.model.position=alibi", f"--workdir={tmp_path / 'w'}",
            f"--config.data.train_file={text_file}", "--config.train.num_steps=1",
            "--config.train.eval_every=0", "--config.train.progress_bar=False",
            "--config.train.peak_flops=1e9", "--config.train.steps_per_call=1"]
    args += [f"--config.model.{k}={v}" for k, v in SHRINK.items()]
    args += ["--config.train.block_size=32", "--config.train.batch_size=4",
             "--config.train.warmup_steps=0"]
    proc = run_cli(args, env=cli_env())  # asserts exit status 0
    assert "export_hf skipped: the HF GPT-2 layout cannot represent {'position': 'alibi'}" \
        in proc.stdout
    assert "done: step 1" in proc.stdout
