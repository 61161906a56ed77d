"""GPU benchmark (run by bench/gpu.sh): 124M training tokens/s and MFU, decode vs HF.

    python bench/gpu_bench.py --json=/path/report.json     # on a machine with an NVIDIA GPU
    python bench/gpu_bench.py --check_deps --wheels=bench/wheels   # dependency report only

Training: GPT-2 124M, bf16 compute with fp32 params, AdamW, batch x 1024 tokens, dropout 0,
through `gpt2jax.training.step.Trainer`, in the variants of TRAIN_VARIANTS (cudnn and xla
attention, unrolled and `scan_layers`, a larger batch with the vocabulary padded to 50,304 as
nanoGPT/llm.c do). Each reports lower and compile seconds, step time, tokens/s and MFU =
model FLOPs/s (6N + 12 L E T per token) over (a) the bf16 matmul peak measured in this run
and (b) the nominal dense bf16 peak of the device if known. Decode: `gpt2jax.generate`
greedy, batch 1 and 8, 256 new tokens (EOS suppressed), then HF `GPT2LMHeadModel.generate`
(PyTorch, bf16, its default SDPA attention) on the same prompts in a separate process, and
the ratios. Memory: XLA's per-device bytes of the compiled train step for each remat policy.
Every part runs in its own try block: a failure is recorded and the rest still runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import hardware  # noqa: E402

# module -> wheel name prefix in bench/wheels (pure-python or cp312 manylinux wheels)
DEPS = {
    "numpy": None, "jax": None, "jaxlib": None,
    "absl": "absl_py", "typing_extensions": "typing_extensions", "msgpack": "msgpack",
    "yaml": "pyyaml", "pygments": "pygments", "mdurl": "mdurl", "markdown_it": "markdown_it_py",
    "rich": "rich", "treescope": "treescope", "optax": "optax", "flax": "flax",
    "ml_collections": "ml_collections", "packaging": "packaging", "pluggy": "pluggy",
    "iniconfig": "iniconfig", "pytest": "pytest", "regex": "regex", "idna": "idna",
    "certifi": "certifi", "urllib3": "urllib3", "charset_normalizer": "charset_normalizer",
    "requests": "requests", "tiktoken": "tiktoken",
}
# Nominal dense bf16 matmul peaks (FLOP/s) from vendor data sheets, by device_kind substring.
NOMINAL_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}


def check_deps(wheels: Path, target: Path) -> int:
    """Prints which deps import; unpacks missing ones from local wheels into `target`."""
    missing = []
    for module, wheel in DEPS.items():
        try:
            mod = importlib.import_module(module)
            print(f"deps: {module:<20} ok {getattr(mod, '__version__', '')}")
        except Exception as e:  # noqa: BLE001 - any import failure counts as missing
            print(f"deps: {module:<20} MISSING ({type(e).__name__}: {e})")
            missing.append((module, wheel))
    installable = []
    for module, wheel in missing:
        files = sorted(wheels.glob(f"{wheel}-*.whl")) if wheel else []
        if files:
            installable.append(str(files[-1]))
        else:
            print(f"deps: {module} cannot be installed offline (no wheel in {wheels}); the parts "
                  "that need it will be skipped")
    target.mkdir(parents=True, exist_ok=True)
    for wheel in installable:
        # A wheel is a zip of the site-packages layout: extracting it is the install (no pip,
        # no index, no dependency resolution that could touch jax).
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
        print(f"deps: unpacked {Path(wheel).name} into {target}")
    return 0


def measure_matmul_peak(n: int = 8192, repeats: int = 20) -> float:
    """bf16 matmul FLOP/s of one device (n x n x n, best of `repeats`)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda x, y: x @ y)
    for _ in range(100):  # about a second of work first: the clocks ramp up under load
        c = mm(a, b)
    c.block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


N_LAYER = 12  # 124M; --n_layer shrinks it for a smoke run on CPU


def _model_cfg(impl: str, remat: str = "none", scan: bool = False, vocab: int = 50257):
    from gpt2jax.nn.model import GPT2Config

    return GPT2Config(dtype="bfloat16", attention_impl=impl, remat=remat, n_layer=N_LAYER,
                      vocab_size=vocab, scan_layers=scan,
                      embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


# part name -> bench_train arguments (batch_scale multiplies --batch)
TRAIN_VARIANTS = {
    "train_cudnn": dict(impl="cudnn"),
    "train_cudnn_scan": dict(impl="cudnn", scan=True),
    "train_xla": dict(impl="xla"),
    "train_cudnn_b2x_v50304": dict(impl="cudnn", batch_scale=2, vocab=50304),
    # the same with the chunked loss (never the whole [B, T, V] logits) / scanned layers
    "train_cudnn_b2x_v50304_chunked": dict(impl="cudnn", batch_scale=2, vocab=50304,
                                           loss_chunk=8192),
    "train_cudnn_b2x_v50304_scan": dict(impl="cudnn", batch_scale=2, vocab=50304, scan=True),
    # remat "dots_saveable": only matmul outputs are kept, the elementwise ops recomputed
    "train_cudnn_b2x_v50304_dots": dict(impl="cudnn", batch_scale=2, vocab=50304,
                                        remat="dots_saveable"),
    "train_cudnn_b2x_v50304_scan_dots": dict(impl="cudnn", batch_scale=2, vocab=50304,
                                             scan=True, remat="dots_saveable"),
}


def _train_config(batch: int, block: int, loss_chunk: int = 0):
    from gpt2jax.training.step import TrainConfig

    return TrainConfig(batch_size=batch, grad_accum_steps=1, block_size=block, num_steps=100,
                       learning_rate=6e-4, min_learning_rate=6e-5, warmup_steps=10,
                       lr_decay_steps=100, schedule="cosine", weight_decay=0.1,
                       decay_embeddings=False, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0,
                       loss_chunk_size=loss_chunk)


def bench_train(impl: str, batch: int, block: int, steps: int, peaks: dict, scan=False,
                vocab=50257, batch_scale=1, loss_chunk=0, remat="none") -> dict:
    """Lower/compile seconds, tokens/s and MFU of the 124M train step (one device)."""
    import jax
    import numpy as np

    from gpt2jax.parallel import sharding
    from gpt2jax.training.step import Trainer, model_flops_per_token
    from configs import common

    batch *= batch_scale
    cfg = _model_cfg(impl, remat, scan=scan, vocab=vocab)
    tc = _train_config(batch, block, loss_chunk)
    mesh_cfg = common.mesh_config()
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:1])
    trainer = Trainer(cfg, tc, mesh, sharding.rules(mesh_cfg))
    state = trainer.init(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, (batch, block + 1)).astype(np.int32)
    batch_arrays = trainer.put_batch({"inputs": ids[:, :-1], "targets": ids[:, 1:],
                                      "weights": np.ones((batch, block), np.float32)})
    t = time.perf_counter()
    lowered = trainer.lower_train_step(state, batch_arrays)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    step = lowered.compile()
    compile_s = time.perf_counter() - t
    memory = sharding.memory_analysis(step)
    for _ in range(3):
        state, metrics = step(state, batch_arrays)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch_arrays)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - t
    tokens_per_s = batch * block * steps / seconds
    flops = model_flops_per_token(cfg, block) * tokens_per_s
    out = {"impl": impl, "scan_layers": scan, "remat": remat, "vocab": vocab,
           "loss_chunk_size": loss_chunk,
           "batch": batch, "block": block,
           "steps": steps, "tokens_per_s": round(tokens_per_s),
           "step_ms": round(1000 * seconds / steps, 2), "model_tflops": round(flops / 1e12, 1),
           "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
           "loss": float(metrics["loss_sum"] / metrics["weight_sum"]),
           "temp_bytes": memory.get("temp"), "peak_bytes": memory.get("peak")}
    for name, peak in peaks.items():
        out[f"mfu_vs_{name}"] = round(flops / peak, 3)
    return out


def _prompt(batch: int, prompt_len: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 50257, (batch, prompt_len))


def bench_decode(batch: int, new_tokens: int, prompt_len: int = 16) -> dict:
    """Greedy decode tokens/s of gpt2jax.generate (124M, bf16, random weights)."""
    import jax
    import numpy as np

    import gpt2jax
    from gpt2jax.nn.model import init_params

    cfg = _model_cfg("xla")
    params = init_params(cfg, jax.random.key(0))
    prompt = _prompt(batch, prompt_len)
    run = lambda: np.asarray(gpt2jax.generate(cfg, params, prompt, max_new_tokens=new_tokens,
                                              min_new_tokens=new_tokens))
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t
    assert out.shape == (batch, prompt_len + new_tokens), out.shape
    tokens_per_s = batch * new_tokens / seconds
    return {"batch": batch, "new_tokens": new_tokens, "tokens_per_s": round(tokens_per_s, 1),
            "ms_per_step": round(1000 * seconds / new_tokens, 3), "first_call_s": round(first, 1)}


def bench_decode_step(new_tokens: int, prompt_len: int = 16) -> dict:
    """Where batch-1 decode time goes: the one-token cached forward alone vs the compiled loop.

    Times `plan.model_step` (the loop body's forward: 12 layers, cache write, head) jitted on
    its own for `new_tokens` one-token calls, once waiting for each call (dispatch + device
    time + sync) and once dispatching them all before one wait (about the device time per
    step, dispatch hidden). `greedy_decode_b1` of the same run gives the loop's ms/step; the
    difference to the pipelined step is what the loop itself adds (token choice, bookkeeping,
    the while-loop condition's device-to-host read).
    """
    import jax
    import jax.numpy as jnp

    from gpt2jax.generation.plan import model_step
    from gpt2jax.nn.model import init_cache, init_params

    cfg = _model_cfg("xla")
    params = init_params(cfg, jax.random.key(0))
    total = prompt_len + new_tokens
    mask = jnp.ones((1, total), jnp.int32)
    # params are an argument, as in the compiled loop (not constants baked into the program)
    forward = jax.jit(functools.partial(model_step, cfg), donate_argnums=1)
    prompt = jnp.asarray(_prompt(1, prompt_len), jnp.int32)
    prompt_positions = jnp.arange(prompt_len)[None]

    def fresh():  # the cache after the prompt
        return forward(params, init_cache(cfg, 1, total), prompt, mask, prompt_positions)[1]

    token = jnp.zeros((1, 1), jnp.int32)
    positions = [jnp.full((1, 1), prompt_len + i, jnp.int32) for i in range(new_tokens)]
    logits, _ = forward(params, fresh(), token, mask, positions[0])  # compile
    logits.block_until_ready()
    timings = {}
    for mode in ("synced", "pipelined"):
        cache = fresh()
        jax.block_until_ready(cache)
        t = time.perf_counter()
        for pos in positions:
            logits, cache = forward(params, cache, token, mask, pos)
            if mode == "synced":
                logits.block_until_ready()
        logits.block_until_ready()
        timings[mode] = 1000 * (time.perf_counter() - t) / new_tokens
    return {"new_tokens": new_tokens, "step_ms_synced": round(timings["synced"], 3),
            "step_ms_pipelined": round(timings["pipelined"], 3)}


def hf_decode(batch: int, new_tokens: int, prompt_len: int = 16) -> dict:
    """Greedy decode tokens/s of HF GPT2LMHeadModel.generate (124M, bf16, random weights,
    PyTorch on the GPU when there is one). Runs in its own process (`--hf_decode_worker`)."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=N_LAYER))
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    prompt = torch.as_tensor(_prompt(batch, prompt_len), device=device)

    def run():
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 do_sample=False, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()
    t = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t
    assert tuple(out.shape) == (batch, prompt_len + new_tokens), out.shape
    return {"batch": batch, "new_tokens": new_tokens, "device": device,
            "attn_implementation": model.config._attn_implementation,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokens_per_s": round(batch * new_tokens / seconds, 1),
            "ms_per_step": round(1000 * seconds / new_tokens, 3)}


def compare_hf_decode(new_tokens: int, report: dict) -> dict:
    """HF decode (batch 1 and 8) in a child process; ratios gpt2jax / HF per batch."""
    cmd = [sys.executable, __file__, "--hf_decode_worker", f"--new_tokens={new_tokens}",
           f"--n_layer={N_LAYER}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    lines = [x for x in done.stdout.splitlines() if x.startswith("HF_DECODE ")]
    if done.returncode or not lines:
        raise RuntimeError(f"HF decode worker failed (exit {done.returncode}): "
                           f"{done.stderr[-1500:]}")
    out = json.loads(lines[-1][len("HF_DECODE "):])
    for key, hf in out.items():
        ours = report.get(f"greedy_decode_{key}", {}).get("tokens_per_s")
        if ours and "tokens_per_s" in hf:
            hf["gpt2jax_over_hf"] = round(ours / hf["tokens_per_s"], 2)
    return out


def bench_remat_memory(batch: int, block: int) -> dict:
    """XLA per-device bytes of the compiled 124M train step for each remat policy (lowered
    from abstract shapes: nothing is allocated)."""
    import jax
    import jax.numpy as jnp

    from configs import common
    from gpt2jax.parallel import sharding
    from gpt2jax.training.step import Trainer

    tc = _train_config(batch, block)
    mesh_cfg = common.mesh_config()
    mesh, axis_rules = sharding.make_mesh(mesh_cfg, jax.devices()[:1]), sharding.rules(mesh_cfg)
    result = {}
    for remat in ("none", "dots_saveable", "full"):
        trainer = Trainer(_model_cfg("xla", remat), tc, mesh, axis_rules)
        batch_sds = {n: jax.ShapeDtypeStruct((batch, block), d, sharding=trainer.batch_sharding)
                     for n, d in (("inputs", jnp.int32), ("targets", jnp.int32),
                                  ("weights", jnp.float32))}
        lowered = trainer.lower_train_step(trainer.abstract_state(), batch_sds)
        result[remat] = sharding.memory_analysis(lowered.compile())
    return result


def _run(name: str, fn, report: dict, json_path: str = "") -> None:
    """Runs one part into report[name] (its error if it fails); rewrites `json_path` after
    every part, so a run stopped by its time limit keeps what it measured."""
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    try:
        report[name] = fn()
        print(json.dumps(report[name]), flush=True)
    except Exception as e:  # noqa: BLE001 - a failed part is reported, the rest still runs
        report[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        traceback.print_exc()
    print(f"   ({time.perf_counter() - t:.1f} s)", flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))


# The parts in the order they run: the headline figures first, in case time runs out.
PARTS = ("peak", "train_cudnn", "train_cudnn_scan", "decode", "hf_decode", "train_xla",
         "train_cudnn_b2x_v50304", "train_cudnn_b2x_v50304_chunked",
         "train_cudnn_b2x_v50304_scan", "train_cudnn_b2x_v50304_dots",
         "train_cudnn_b2x_v50304_scan_dots", "remat")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json", default="")
    p.add_argument("--check_deps", action="store_true")
    p.add_argument("--wheels", default=str(REPO / "bench" / "wheels"))
    p.add_argument("--target", default="/tmp/gpt2jax_deps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--parts", default=",".join(x for x in PARTS if x != "remat"),
                   help=f"comma-separated, from {','.join(PARTS)} (run in that order)")
    p.add_argument("--hf_decode_worker", action="store_true", help="internal (hf_decode)")
    args = p.parse_args()
    global N_LAYER
    N_LAYER = args.n_layer
    if args.check_deps:
        sys.exit(check_deps(Path(args.wheels), Path(args.target)))
    if args.hf_decode_worker:  # no jax in this process: PyTorch has the GPU to itself
        result = {f"b{b}": hf_decode(b, args.new_tokens) for b in (1, 8)}
        print("HF_DECODE " + json.dumps(result), flush=True)
        return
    import jax

    parts = set(args.parts.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        sys.exit(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
    device = jax.devices()[0]
    report = {"jax": jax.__version__, "backend": jax.default_backend(),
              "device": device.device_kind, "device_count": jax.device_count()}
    report["host_cpu"] = hardware.describe()
    print(json.dumps(report), flush=True)
    peaks = {}
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in device.device_kind), None)
    if nominal:
        peaks["nominal_bf16"] = nominal
    run = functools.partial(_run, report=report, json_path=args.json)
    for part in (x for x in PARTS if x in parts):
        if part == "peak":
            run("matmul_peak", lambda: {"bf16_tflops": round(measure_matmul_peak() / 1e12, 1)})
            if "bf16_tflops" in report["matmul_peak"]:
                peaks["measured_matmul"] = report["matmul_peak"]["bf16_tflops"] * 1e12
        elif part in TRAIN_VARIANTS:
            run(part, lambda v=TRAIN_VARIANTS[part]: bench_train(
                batch=args.batch, block=args.block, steps=args.steps, peaks=peaks, **v))
        elif part == "decode":
            run("greedy_decode_b1", lambda: bench_decode(1, args.new_tokens))
            run("greedy_decode_b8", lambda: bench_decode(8, args.new_tokens))
            run("decode_step_b1", lambda: bench_decode_step(args.new_tokens))
            loop = report["greedy_decode_b1"].get("ms_per_step")
            alone = report["decode_step_b1"].get("step_ms_pipelined")
            if loop and alone:
                report["decode_step_b1"]["loop_ms_per_step"] = loop
                report["decode_step_b1"]["loop_overhead_ms"] = round(loop - alone, 3)
        elif part == "hf_decode":
            run("hf_decode", lambda: compare_hf_decode(args.new_tokens, report))
        elif part == "remat":
            run("remat_memory_bytes_per_device",
                lambda: bench_remat_memory(args.batch, args.block))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # honest peak_bytes_in_use
    main()
