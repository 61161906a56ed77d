"""`run.py --mode=generate` end to end: the seed's example command reproduces HF's tokens."""

import json

import numpy as np
import pytest
import torch

from configs import gpt2 as gpt2_configs
from gpt2jax.cli import CliArgs
from gpt2jax.cli import generate as cli
from gpt2jax.errors import ConfigError
from helpers import cli_env, hf_model, run_cli

PROMPT = "The quick brown fox jumps over the"
# one CPU device in the subprocesses (conftest simulates 8 for this process)
ENV = cli_env()
SEED_EXAMPLE = dict(max_length=50, num_beams=5, no_repeat_ngram_size=2, top_k=50, top_p=0.95,
                    temperature=0.7)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random GPT-2 saved as an HF directory (config.json + model.safetensors)."""
    hf = hf_model(seed=3, vocab_size=50257, n_positions=128)
    path = tmp_path_factory.mktemp("hf_tiny")
    hf.save_pretrained(path)
    return hf, path


def tiny_config(init_from: str = ""):
    config = gpt2_configs.get_config("small")
    config.model.update(n_layer=2, n_head=4, n_embd=64, n_positions=128)
    config.init_from = init_from
    return config


def test_seed_example_command_matches_hf(hf_dir, tokenizer, tmp_path):
    hf, path = hf_dir
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=50256,
                          **SEED_EXAMPLE)[0].tolist()
    out = tmp_path / "out.json"
    overrides = [f"--config.generate.{k}={v}" for k, v in SEED_EXAMPLE.items()]
    proc = run_cli(["--mode=generate", "--config=configs/gpt2.py:small",
                    f"--config.init_from={path}", f"--prompt={PROMPT}", f"--output_json={out}",
                    *overrides], env=ENV)  # asserts exit status 0
    result = json.loads(out.read_text())
    assert result[0]["tokens"][0] == ref
    assert len(result[0]["scores"]) == 1
    assert PROMPT in proc.stdout


def test_random_init_streams_greedy_text(tokenizer, capsys, tmp_path):
    config = tiny_config()
    config.generate.update(max_length=20)
    out = tmp_path / "out.json"
    results = cli.main(config, CliArgs(prompt="Hello there", output_json=str(out)))
    printed = capsys.readouterr().out
    completion = results[0]["completions"][0]
    assert printed.startswith("Hello there" + completion)
    assert len(results[0]["tokens"][0]) == 20
    assert json.loads(out.read_text()) == results


def test_a_streamed_request_too_long_prints_nothing_before_its_error(capsys):
    # the prompt was echoed before generate refused the length: "Helloerror: ..." on a terminal
    config = tiny_config()
    config.generate.update(max_new_tokens=200)  # 2 + 200 > n_positions=128
    with pytest.raises(ConfigError, match="exceeds the model's n_positions=128"):
        cli.main(config, CliArgs(prompt="Hello"))
    assert capsys.readouterr().out == ""


def test_padded_vocabulary_generates_only_decodable_tokens(capsys):
    """A random model with 100,000 rows (half past the tokenizer's 50,257, so greedy picks
    them at most steps; decoding one crashed before `suppress_tokens`): every new token
    decodes, streamed (greedy) and not (beam search)."""
    config = tiny_config()
    config.model.vocab_size = 100_000
    config.generate.update(max_new_tokens=12)
    for beams in (1, 2):
        config.generate.num_beams = beams
        tokens = cli.main(config, CliArgs(prompt="Hello there"))[0]["tokens"][0]
        assert len(tokens) > 12 and max(tokens) < 50257, (beams, tokens)


def test_prompt_file_batches_prompts(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("One\nA longer second prompt here\nThird\n")
    config = tiny_config()
    config.generate.update(max_new_tokens=5, num_beams=2, num_return_sequences=2)
    results = cli.main(config, CliArgs(prompt_file=str(prompts)))
    assert [r["prompt"] for r in results] == ["One", "A longer second prompt here", "Third"]
    assert all(len(r["completions"]) == 2 and len(r["scores"]) == 2 for r in results)
    assert np.isfinite(results[0]["scores"]).all()
    assert "A longer second prompt here" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (CliArgs(), "exactly one of --prompt"),
    (CliArgs(prompt=""), "empty prompt"),  # a missing --prompt_file: the catalogue's
])
def test_bad_prompts_raise_config_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        cli.main(tiny_config(), args)


def test_blank_line_in_prompt_file_is_named(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("ok\n\nalso ok\n")
    with pytest.raises(ConfigError, match="line 2"):
        cli.main(tiny_config(), CliArgs(prompt_file=str(prompts)))
