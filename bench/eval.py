"""Evaluation speed: gpt2jax strided perplexity vs Hugging Face transformers (PyTorch) forward,
tokens/s at context 1024 on the same random 124M weights, side by side in one run.

    GPT2JAX_DATA_DIR=../shared/data python bench/eval.py [--windows 8] [--batch 2]

Both score the same WikiText-2 raw tokens with disjoint 1024-token windows (stride 1024), so
the scored tokens are identical; their perplexities are printed and must agree. HF runs the
guide's loop (`model(input_ids, labels=...)`, batch 1, torch.no_grad) twice: with eager
attention (the baseline issue 15 measured against) and with SDPA (transformers' default,
what the guide's `from_pretrained` gives). gpt2jax runs `perplexity(..., batch_size=--batch)`,
compiled once (compile time reported apart from the steady-state rate). Prints tokens/s for
all three and gpt2jax's ratio to each HF run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hardware  # noqa: E402
from gpt2jax.eval import perplexity as ppl_lib  # noqa: E402
from gpt2jax.eval.tasks import wikitext_hf_join  # noqa: E402
from gpt2jax.nn.model import GPT2Config, init_params  # noqa: E402
from gpt2jax.data.bpe import get_encoding  # noqa: E402
from gpt2jax.weights.pretrained import config_to_hf, params_to_hf_state_dict  # noqa: E402


def hf_model(cfg: GPT2Config, params, attention: str):
    import torch
    import transformers

    hf_cfg = transformers.GPT2Config(**config_to_hf(cfg), attn_implementation=attention)
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in params_to_hf_state_dict(params, cfg).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("attn.bias" in k or "lm_head" in k for k in missing), missing
    model.tie_weights()
    return model


def hf_loop(model, ids: np.ndarray, length: int) -> tuple[float, int, float]:
    """HF guide's loop with stride == length: (nll sum, scored tokens, seconds)."""
    import torch

    x = torch.as_tensor(ids)[None]
    nll, count = 0.0, 0
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(ids), length):
            window = x[:, begin:begin + length]
            loss = model(window, labels=window).loss
            nll += float(loss) * (window.shape[1] - 1)
            count += window.shape[1] - 1
    return nll, count, time.perf_counter() - start


def ours(cfg, params, ids, length: int, batch: int):
    """(result, first-call seconds incl. compile, steady-state seconds)."""
    start = time.perf_counter()
    ppl_lib.perplexity(cfg, params, ids[: 2 * length], length, length, batch_size=batch)
    first = time.perf_counter() - start
    start = time.perf_counter()
    res = ppl_lib.perplexity(cfg, params, ids, length, length, batch_size=batch)
    return res, first, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=8, help="1024-token windows to score")
    p.add_argument("--batch", type=int, default=2,
                   help="gpt2jax windows per call (on one CPU device a 124M pass holds one "
                        "window whatever the batch: perplexity.rows_per_pass)")
    p.add_argument("--dtype", default="float32", help="gpt2jax compute dtype")
    p.add_argument("--attention_impl", default="blocked",
                   help="gpt2jax attention kernel (configs/eval.py's default: blocked; einsum = "
                        "the reference)")
    args = p.parse_args()
    print(hardware.describe(), flush=True)
    data = Path(os.environ.get("GPT2JAX_DATA_DIR", Path(__file__).parents[2] / "shared/data"))
    enc = get_encoding(data / "gpt2" / "gpt2.tiktoken")
    length = 1024
    text = wikitext_hf_join(data / "wikitext-2-raw" / "wiki.test.raw")
    ids = np.asarray(enc.encode_ordinary(text)[: args.windows * length], np.int64)
    cfg = GPT2Config(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, dtype=args.dtype,
                     attention_impl=args.attention_impl)
    params = init_params(cfg, jax.random.key(0))
    hf = {}
    for attention in ("eager", "sdpa"):
        hf[attention] = hf_loop(hf_model(cfg, params, attention), ids, length)
    res, first_s, our_s = ours(cfg, params, ids, length, args.batch)
    assert all(count == res.token_count for _, count, _ in hf.values())
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, "
          f"{args.windows} windows x {length} tokens, 124M random weights")
    print(f"{'':<30}{'tokens/s':>12}{'ppl':>14}")
    for attention, (nll, count, seconds) in hf.items():
        print(f"{'HF transformers, ' + attention:<30}{count / seconds:>12.1f}"
              f"{math.exp(nll / count):>14.2f}")
    ours_rate = res.token_count / our_s
    print(f"{'gpt2jax perplexity':<30}{ours_rate:>12.1f}{res.perplexity:>14.2f}"
          f"   (attention {args.attention_impl}; first call incl. compile {first_s:.1f} s, "
          f"batch {args.batch}, {args.dtype})")
    for attention, (_, count, seconds) in hf.items():
        print(f"ratio gpt2jax / HF {attention}: {ours_rate / (count / seconds):.2f}x")


if __name__ == "__main__":
    main()
