"""Where a CPU decode step goes, part by part, XLA:CPU beside PyTorch (oneDNN / MKL), one run.

    python bench/decode_parts.py                 # 124M shapes, batch 1, 5 and 8
    python bench/decode_parts.py --batches 1 8 --cache 144 --repeats 30

Parts of one 124M decode step at batch B (rows of x), each timed alone as the median of
`--repeats` calls, in turns (jax, torch, jax, ...) so that a shared machine's load drifts over
both alike:

- dots `x [B, K] @ W [K, N]` of the layer kernels (c_attn 768x2304, attn c_proj 768x768,
  c_fc 768x3072, mlp c_proj 3072x768): jax.jit as the model writes them (W stored [K, N]),
  jax with W stored transposed [N, K], torch.mm (HF's Conv1D: W stored [K, N]) and
  torch linear (W [N, K]). The tied head (wte [50257, 768]): `x @ wte^T` (the model's form
  for a full forward and at batch 1), `(wte @ x^T)^T` (the model's decode step of several
  rows, `decode_kernels.few_rows_logits`) and torch's linear (HF's lm_head). GB/s = weight
  bytes / time: at batch 1-8 a dot's floor is one read of W. The weights are L3-resident
  here (each alone fits in 32 MB), unlike in a decode step, which streams all 498 MB.
- the attention of one query per row against an S-slot cache, half of it masked: the einsum
  reference on a [B, S, H, D] cache (the layout before 2026-12-06), `cached_attention` on
  the [B, H, S, D] cache (now), jax.nn.dot_product_attention (XLA) on [B, S, H, D], torch
  SDPA on HF's [B, H, S, D] cache (HF's default).
- the cache write: `dynamic_update_slice` of one token into a donated cache vs torch.cat (what
  HF's DynamicCache does every step).

Prints one table; `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from bench import hardware  # noqa: E402
from gpt2jax.nn import attention as attn_lib  # noqa: E402
from gpt2jax.nn import decode_kernels  # noqa: E402

DOTS = {"c_attn": (768, 2304), "attn.c_proj": (768, 768), "c_fc": (768, 3072),
        "mlp.c_proj": (3072, 768), "head (wte^T)": (768, 50257)}


def median_ms(fn, repeats: int) -> float:
    """Median wall milliseconds of `fn()` (it must block until its result is ready)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def turns(fns: dict, repeats: int, rounds: int = 3) -> dict:
    """{name: median ms} with the candidates timed in turns, `rounds` times each."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(median_ms(fn, max(1, repeats // rounds)))
    return {k: statistics.median(v) for k, v in out.items()}


def dot_candidates(batch: int, k: int, n: int, head: bool) -> dict:
    """Callables for x [B, K] @ W [K, N] (or the head's x @ wte^T with wte [N, K])."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, k), np.float32)
    w = rng.standard_normal((k, n), np.float32) * 0.02
    xj, wj, wtj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(np.ascontiguousarray(w.T))
    xt, wt_, wtt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(w.T.copy())
    plain = jax.jit(lambda x, w: x @ w)
    transposed = jax.jit(lambda x, wt: jax.lax.dot_general(x, wt, (((1,), (1,)), ((), ()))))
    fns = {
        "jax W[K,N]": lambda: plain(xj, wj).block_until_ready(),
        "jax W^T[N,K]": lambda: transposed(xj, wtj).block_until_ready(),
        "torch addmm W[K,N]": lambda: torch.mm(xt, wt_),
        "torch linear W^T[N,K]": lambda: torch.nn.functional.linear(xt, wtt),
    }
    if head:  # wte is stored [V, E]: the "W^T" rows are the model's
        rows_last = jax.jit(decode_kernels.few_rows_logits)
        x3 = xj[:, None]
        fns = {"jax x@wte^T": fns["jax W^T[N,K]"],
               "jax (wte@x^T)^T": lambda: rows_last(x3, wtj).block_until_ready(),
               "torch x@wte^T (HF)": fns["torch linear W^T[N,K]"]}
    return fns


def attention_candidates(batch: int, slots: int, heads: int = 12, dim: int = 64) -> dict:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, 1, heads, dim), np.float32)
    k = rng.standard_normal((batch, slots, heads, dim), np.float32)
    v = rng.standard_normal((batch, slots, heads, dim), np.float32)
    mask = np.ones((batch, 1, 1, slots), bool)
    mask[..., slots // 2:] = False  # half the cache not yet written
    qj, kj, vj, mj = map(jnp.asarray, (q, k, v, mask))
    xla = jax.jit(lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m))
    ein = jax.jit(lambda q, k, v, m: attn_lib.einsum_attention(q, k, v, m))
    cached = jax.jit(decode_kernels.cached_attention)
    kc, vc = (jnp.asarray(a.transpose(0, 2, 1, 3)) for a in (k, v))  # the [B, H, S, D] cache
    qt, kt, vt = (torch.from_numpy(a).transpose(1, 2).contiguous() for a in (q, k, v))
    mt = torch.from_numpy(mask)
    return {
        "jax einsum [B,S,H,D]": lambda: ein(qj, kj, vj, mj).block_until_ready(),
        "jax cached [B,H,S,D]": lambda: cached(qj, kc, vc, mj).block_until_ready(),
        "jax xla dpa": lambda: xla(qj, kj, vj, mj).block_until_ready(),
        "torch sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=mt),
    }


def cache_write_candidates(batch: int, slots: int, heads: int = 12, dim: int = 64) -> dict:
    """One token into a donated cache (XLA: in place) vs torch's DynamicCache (cat)."""
    update = jax.jit(lambda c, t, i: jax.lax.dynamic_update_slice(c, t, (0, 0, i, 0)),
                     donate_argnums=0)
    state = {"cache": jnp.zeros((batch, heads, slots, dim))}
    token = jnp.ones((batch, heads, 1, dim))
    tc = torch.zeros(batch, heads, slots // 2, dim)
    tt = torch.ones(batch, heads, 1, dim)

    def jax_write():
        state["cache"] = update(state["cache"], token, jnp.int32(slots // 2))
        state["cache"].block_until_ready()

    return {"jax update_slice (donated)": jax_write,
            "torch cat (HF DynamicCache)": lambda: torch.cat([tc, tt], dim=2)}


def at_least(low: int):
    """argparse type: an int >= low (argparse prints the message and exits 2 otherwise)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}; give {low} or more")
        return value

    return parse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=at_least(1), nargs="+", default=[1, 5, 8])
    p.add_argument("--cache", type=at_least(2), nargs="+", default=[144, 1024],
                   help="cache slots S for the attention and cache-write parts (>= 2)")
    p.add_argument("--repeats", type=at_least(3), default=30)
    p.add_argument("--json", default="")
    args = p.parse_args()
    print(hardware.describe())
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}); median ms, candidates in turns")
    rows = []
    for batch in args.batches:
        for name, (k, n) in DOTS.items():
            res = turns(dot_candidates(batch, k, n, name.startswith("head")), args.repeats)
            rows.append({"part": f"dot {name}", "batch": batch, "ms": res,
                         "weight_mb": k * n * 4 / 1e6})
        for slots in args.cache:
            rows.append({"part": f"attention S={slots}", "batch": batch,
                         "ms": turns(attention_candidates(batch, slots), args.repeats)})
            rows.append({"part": f"cache write S={slots}", "batch": batch,
                         "ms": turns(cache_write_candidates(batch, slots), args.repeats)})
    for row in rows:
        mb = row.get("weight_mb")
        cells = ", ".join(f"{k} {v:.3f}" + (f" ({mb / v:.1f} GB/s)" if mb else "")
                          for k, v in row["ms"].items())
        print(f"B={row['batch']} {row['part']:<22} {cells}", flush=True)
    print(hardware.describe())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
