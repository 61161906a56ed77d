"""What an attention sweep measures besides the val loss (`sweep.measure`, `sweep.kv_conversion`).

Per run, from its saved checkpoint (`measure_run`):
- `eval_nll`: {length: NLL per token} of the validation text with disjoint windows of each
  `measure.eval_lengths` length (Press et al. 2022's protocol), None where the model's
  position scheme stops (learned positions past n_positions);
- `decode_tokens_per_sec`: greedy `generate` of `measure.decode_tokens` tokens, batch 1,
  after a compiling call (median of 3).

After the runs (`kv_conversion_table`): each seed of the `kv_conversion.source` variant is
converted to each of `groups` key/value heads by each of `methods` (`gpt2jax.convert_kv_heads`,
Ainslie et al. 2023), scored at the trained length before and after `uptrain_steps` steps of
uptraining in the usual loop (`--config.train.convert_kv_heads`). Every entry keeps its
`sweep_result.json` in `<workdir>/kv_conversion/<method>_g<g>/seed_<s>`, so a stopped sweep
resumes there too.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from gpt2jax import data as data_lib
from gpt2jax.eval.perplexity import perplexity
from gpt2jax.generation.generate import generate
from gpt2jax.nn.kv_heads import convert_kv_heads
from gpt2jax.nn.model import GPT2Config, kv_cache_bytes_per_token
from gpt2jax.nn.positions import context_limit
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.weights.loader import load_model

RESULT_FILE = "sweep_result.json"


@functools.lru_cache(maxsize=4)
def _val_tokens(data_json: str) -> np.ndarray:
    data_config = ml_collections.ConfigDict(json.loads(data_json))
    return data_lib.load_streams(data_config)[2].to_numpy()


def val_tokens(config, max_tokens: int) -> np.ndarray:
    """The validation tokens [n] of a run's `config.data` (the first `max_tokens`; 0 = all)."""
    ids = _val_tokens(json.dumps(config.data.to_dict(), sort_keys=True))
    return ids[:max_tokens] if max_tokens else ids


def extrapolation(cfg: GPT2Config, params, ids: np.ndarray, lengths, batch_size: int) -> dict:
    """{str(length): NLL per token with disjoint windows of that length, or None past what
    the position scheme defines}."""
    limit = context_limit(cfg)
    out = {}
    for n in lengths:
        if limit is not None and n > limit:
            out[str(n)] = None
            continue
        out[str(n)] = perplexity(cfg, params, ids, int(n), int(n), batch_size).nll_per_token
    return out


def decode_speed(cfg: GPT2Config, params, tokens: int) -> float:
    """Greedy decode tokens/s at batch 1 from a one-token prompt (compiled first, median of
    3 timed calls; the whole generate call, cache included)."""
    prompt = np.zeros((1, 1), np.int32)
    run = functools.partial(generate, cfg, params, prompt, np.ones_like(prompt),
                            max_new_tokens=int(tokens), eos_token_id=None)
    jax.block_until_ready(run())
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def measure_run(config, workdir: Path, measure) -> dict:
    """The extra numbers of one finished run (module docstring), from its checkpoint."""
    cfg, params, _ = load_model(workdir)
    ids = val_tokens(config, measure.eval_tokens)
    return {"eval_nll": extrapolation(cfg, params, ids, measure.eval_lengths,
                                      measure.eval_batch_size),
            "eval_tokens": int(len(ids)),
            "decode_tokens_per_sec": decode_speed(cfg, params, measure.decode_tokens)}


def _uptrain_config(sweep, source_config, seed: int, source_dir: Path, groups: int,
                    method: str):
    """The source run's config, started from its checkpoint with `groups` kv heads."""
    kc = sweep.kv_conversion
    c = ml_collections.ConfigDict(source_config.to_dict())
    c.seed, c.init_from = seed, str(source_dir)
    steps = int(kc.uptrain_steps)
    c.train.update(convert_kv_heads=groups, convert_kv_method=method, num_steps=steps,
                   learning_rate=kc.uptrain_learning_rate, warmup_steps=max(1, steps // 10),
                   lr_decay_steps=0, eval_every=steps)
    c.train.min_learning_rate = min(c.train.min_learning_rate, kc.uptrain_learning_rate)
    return c


def _convert_one(sweep, source_config, seed: int, source_dir: Path, groups: int,
                 method: str, workdir: Path, decode_cache: dict) -> dict:
    done = workdir / RESULT_FILE
    if done.is_file():
        return json.loads(done.read_text())
    cfg, params, _ = load_model(source_dir)
    trained = int(source_config.train.block_size)
    ids = val_tokens(source_config, sweep.measure.eval_tokens)
    batch = sweep.measure.eval_batch_size
    new_cfg, new = convert_kv_heads(cfg, params, groups, method, jax.random.key(seed))
    record = {"seed": seed, "groups": groups, "method": method,
              "nll_before": extrapolation(new_cfg, new, ids, [trained], batch)[str(trained)],
              "kv_cache_bytes_per_token": kv_cache_bytes_per_token(new_cfg)}
    if groups not in decode_cache:  # the same shapes for every method
        decode_cache[groups] = decode_speed(new_cfg, new, sweep.measure.decode_tokens)
    record["decode_tokens_per_sec"] = decode_cache[groups]
    record["uptrain_steps"] = int(sweep.kv_conversion.uptrain_steps)
    if record["uptrain_steps"] > 0:
        start = time.perf_counter()
        up_dir = workdir / "uptrain"
        out = train_and_evaluate(_uptrain_config(sweep, source_config, seed, source_dir,
                                                 groups, method), up_dir)
        cfg_up, params_up, _ = load_model(up_dir)
        record.update(nll_after=extrapolation(cfg_up, params_up, ids, [trained],
                                              batch)[str(trained)],
                      uptrain_val_loss=out["val_loss"],
                      uptrain_wall_s=time.perf_counter() - start)
    done.write_text(json.dumps(record, indent=1))
    return record


def kv_conversion_table(sweep, workdir: Path, configs: dict) -> list[dict]:
    """Every (seed, groups, method) entry of `sweep.kv_conversion` (module docstring).

    `configs`: {(variant, seed): its training config}; the source's runs must be finished.
    Returns [] when `kv_conversion.source` is "" or not among the variants run."""
    kc = sweep.kv_conversion
    records = []
    for seed in sweep.seeds:
        key = (kc.source, int(seed))
        source_dir = workdir / kc.source / f"seed_{seed}"
        if not kc.source or key not in configs or not (source_dir / RESULT_FILE).is_file():
            continue
        decode_cache: dict = {}
        for groups in kc.groups:
            for method in kc.methods:
                print(f"sweep: kv conversion {method} g={groups} seed {seed}", flush=True)
                entry = workdir / "kv_conversion" / f"{method}_g{groups}" / f"seed_{seed}"
                entry.mkdir(parents=True, exist_ok=True)
                records.append(_convert_one(sweep, configs[key], int(seed), source_dir,
                                            int(groups), method, entry, decode_cache))
    return records
