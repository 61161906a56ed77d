"""Length extrapolation: a model whose position scheme defines every position (RoPE, ALiBi,
sinusoidal, none) reads past its n_positions in the forward pass, `perplexity`, `generate`
(the KV cache sized from the requested length) and `--mode=eval` (one row set per
`eval.context_lengths` entry). Learned positions keep a clear refusal.

The exact equivalence: these schemes have no parameter of size n_positions, so the same
weights under a config with a larger n_positions must give bit-identical results; a model
read past its n_positions is exactly the model read within a larger one."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from transformers.models.distilbert import modeling_distilbert

import jax
import jax.numpy as jnp

from configs import eval as eval_configs
from gpt2jax import GPT2, ConfigError, generate, init_cache, perplexity
from gpt2jax.cli import CliArgs
from gpt2jax.cli import eval as eval_cli
from gpt2jax.nn.positions import UNBOUNDED, sinusoidal_embedding
from helpers import tiny_config, tiny_params

SHORT, LONG = 16, 48  # trained context, evaluated length (3x)
SMALL = dict(n_layer=1, n_head=4, n_embd=32, vocab_size=64, n_positions=SHORT,
             embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
CASES = [(p, w) for p in UNBOUNDED for w in (0, 6)]  # every scheme, alone and windowed


def _pair(position: str, window: int):
    """(cfg at n_positions=SHORT, the same with n_positions=4*LONG, shared params)."""
    small = tiny_config(**SMALL, position=position, sliding_window=window)
    return small, small.replace(n_positions=4 * LONG), tiny_params(small, seed=3)


def _forward(cfg, params, ids):
    return jax.jit(lambda p, x: GPT2(cfg).apply({"params": p}, x))(params, ids)


@pytest.mark.parametrize("position,window", CASES)
def test_past_n_positions_equals_a_larger_n_positions(position, window):
    small, big, params = _pair(position, window)
    ids = jax.random.randint(jax.random.key(1), (2, LONG), 0, small.vocab_size)
    logits = _forward(small, params, ids)
    assert logits.shape == (2, LONG, small.vocab_size)
    np.testing.assert_array_equal(logits, _forward(big, params, ids))
    # perplexity with windows 3x the trained context, disjoint as Press et al. evaluate
    text = np.asarray(jax.random.randint(jax.random.key(2), (200,), 0, small.vocab_size))
    a = perplexity(small, params, text, context_length=LONG, batch_size=8)
    b = perplexity(big, params, text, context_length=LONG, batch_size=8)
    assert a.window_nll_sums == b.window_nll_sums and a.windows == 5 and a.stride == LONG
    # generation far past SHORT: the cache is sized from the prompt + the new tokens, and the
    # greedy tokens are the argmax of the larger model's full forward at every step
    prompt = np.asarray(ids[:1, :5])
    out = np.asarray(generate(small, params, prompt, max_new_tokens=LONG - 5))
    assert out.shape == (1, LONG)
    ref = np.asarray(_forward(big, params, jnp.asarray(out)))
    np.testing.assert_array_equal(out[0, 5:], ref[0, 4:-1].argmax(-1))


@pytest.mark.parametrize("position", ["alibi", "sinusoidal"])
def test_cached_decode_past_n_positions_equals_the_full_forward(position):
    small, big, params = _pair(position, 0)
    ids = jax.random.randint(jax.random.key(4), (1, LONG), 0, small.vocab_size)
    cache = init_cache(small, 1, LONG)  # refused before: LONG > n_positions
    assert cache["h_0"]["attn"]["cached_key"].shape == (1, 4, LONG, 8)

    @jax.jit
    def step(cache, token):
        return GPT2(small).apply({"params": params, "cache": cache}, token, decode=True,
                                 mutable=["cache"])

    steps = []
    for t in range(LONG):
        logits, mutated = step(cache, ids[:, t:t + 1])
        cache = mutated["cache"]
        steps.append(logits[:, 0])
    np.testing.assert_allclose(jnp.stack(steps, 1), _forward(big, params, ids), atol=2e-5)


def test_learned_positions_refuse_with_the_schemes_that_go_further():
    cfg = tiny_config(**SMALL)
    params = tiny_params(cfg)
    text = np.arange(100) % cfg.vocab_size
    schemes = re.escape("position in ['rope', 'alibi', 'sinusoidal', 'none']")
    with pytest.raises(ConfigError, match=r"context_length=48 exceeds the model's "
                       r"n_positions=16 .*" + f"{schemes}"):
        perplexity(cfg, params, text, context_length=LONG)
    with pytest.raises(ConfigError, match=rf"5 prompt tokens \+ 48 new tokens=53 .*{schemes}"):
        generate(cfg, params, text[None, :5], max_new_tokens=LONG)
    with pytest.raises(ConfigError, match=f"max_length=48 exceeds.*{schemes}"):
        init_cache(cfg, 1, LONG)
    # the model's own limit is the default length
    assert perplexity(cfg, params, text).context_length == SHORT


def test_sinusoidal_embedding_is_distilberts():
    """Vaswani et al.'s table as DistilBERT (transformers) builds it, sin/cos interleaved."""
    n, dim = 1024, 32
    ref = torch.zeros(n, dim)
    modeling_distilbert._create_sinusoidal_embeddings(n, dim, ref)
    ours = sinusoidal_embedding(jnp.arange(n)[None], dim)[0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=2e-4)  # float32 angles up to 1023 rad
    np.testing.assert_allclose(ours[:64], ref.numpy()[:64], atol=5e-6)


def _eval_config(text_file, position: str, lengths: str):
    """`configs/eval.py:text8` on a 300-token file: GPT-2 BPE, a random tiny model."""
    config = eval_configs.get_config("text8")
    config.model.update(SMALL, vocab_size=50257, position=position)
    config.eval.files.raw, config.mesh.data = str(text_file), 1
    config.eval.update(context_lengths=lengths, batch_size=2, progress=False)
    return config


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, data_dir, tokenizer):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:5000]
    text = tokenizer.decode(tokenizer.encode(text)[:300])
    path = tmp_path_factory.mktemp("eval") / "text.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_eval_cli_one_row_per_context_length(text_file, capsys):
    config = _eval_config(text_file, "alibi", "16,32,64")
    rows = eval_cli.main(config, CliArgs())
    ppl = {r["context_length"]: r for r in rows if r["metric"] == "ppl"}
    assert sorted(ppl) == [16, 32, 64]
    n = 300
    for length, row in ppl.items():
        assert row["stride"] == length  # disjoint windows: each scores all but its first token
        assert row["tokens"] == n - -(-n // length)
    printed = capsys.readouterr().out
    assert "context" in printed.splitlines()[0] and "      64  ppl" in printed
    # the 64-token row is the library's perplexity of the same model and tokens
    cfg, params, enc = eval_cli.model_for_config(config)
    ids = enc.encode(text_file.read_text(encoding="utf-8"))
    assert len(ids) == n
    res = perplexity(cfg, params, np.asarray(ids), 64, 64, batch_size=2)
    assert ppl[64]["value"] == res.perplexity


def test_eval_cli_refuses_learned_past_context_and_bad_lengths(text_file):
    with pytest.raises(ConfigError, match="context_length=64 exceeds the model's n_positions=16"):
        eval_cli.evaluate_config(_eval_config(text_file, "learned", "16,64"))
    with pytest.raises(ConfigError, match="eval.context_lengths='16,x' must be comma-separated"):
        eval_cli.evaluate_config(_eval_config(text_file, "alibi", "16,x"))
