"""Generation speed: HF transformers (PyTorch CPU, fp32) vs gpt2jax, side by side, one run.

    python bench/generate.py            # 124M random weights, shared by both
    python bench/generate.py --quick    # tiny model, to check that the script runs

Cases: greedy 128 new tokens batch 1, beam 5 with 64 new tokens, top-k/top-p sampling 128
tokens, greedy 128 tokens batch 8. Both sides get min_new_tokens = max_new_tokens so that a
random model's EOS never ends a run early. Prints tokens/s of both, the ratio, gpt2jax's
compile time (first call minus a steady call) and the fraction of the memory-bandwidth
limit: weights bytes read per decode step / DRAM bandwidth measured here (numpy copy).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench import hardware  # noqa: E402
from gpt2jax.weights import pretrained as weights  # noqa: E402
from gpt2jax.generation.generate import DECODERS, generate  # noqa: E402

CASES = [
    ("greedy b1", dict(num_beams=1), 1, 128),
    ("beam5", dict(num_beams=5), 1, 64),
    ("top-k/top-p sample", dict(do_sample=True, top_k=50, top_p=0.95, temperature=0.8), 1, 128),
    ("greedy b8", dict(num_beams=1), 8, 128),
]


def dram_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best copy bandwidth (read + write bytes per second) of a large numpy array, GB/s."""
    src = np.ones(megabytes * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, best of `repeats` later calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny model, few tokens")
    parser.add_argument("--repeats", type=int, default=2)
    flags = parser.parse_args()
    print(hardware.describe(), flush=True)
    shape = dict(n_layer=2, n_head=4, n_embd=64) if flags.quick else {}
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval()
    cfg = weights.config_from_hf(hf.config.to_dict())
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    params = jax.device_put(weights.hf_state_dict_to_params(state, cfg))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    bandwidth = dram_bandwidth_gbs()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    print(f"weights {weight_bytes / 1e6:.0f} MB fp32; DRAM copy bandwidth {bandwidth:.1f} GB/s "
          f"-> batch-1 limit {bandwidth * 1e9 / weight_bytes:.1f} decode steps/s")
    prompt = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931]])  # "The quick ..."
    header = (f"{'case':20s} {'HF tok/s':>9s} {'jax tok/s':>9s} {'ratio':>6s} "
              f"{'compile s':>9s} {'of BW limit':>11s}")
    print(header)
    for name, kwargs, batch, new in CASES:
        if flags.quick:
            new = 16
        ids = np.repeat(prompt, batch, axis=0)
        common = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=50256, **kwargs)

        def run_hf():
            with torch.no_grad():
                torch.manual_seed(0)
                hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=int),
                            **common)

        def run_jax():
            generate(cfg, params, ids, **common)

        _, hf_s = timed(run_hf, max(1, flags.repeats - 1))
        traces = DECODERS.traces.total()
        first, jax_s = timed(run_jax, flags.repeats)
        assert DECODERS.traces.total() - traces <= 1, "recompiled a warm shape"
        tokens = batch * new
        steps_per_s = new / jax_s  # one pass over the weights per step (batch/beams share it)
        limit = bandwidth * 1e9 / weight_bytes
        print(f"{name:20s} {tokens / hf_s:9.1f} {tokens / jax_s:9.1f} {hf_s / jax_s:6.2f} "
              f"{first - jax_s:9.1f} {steps_per_s / limit:11.0%}", flush=True)


if __name__ == "__main__":
    main()
