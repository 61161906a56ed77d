"""lm-eval speed: the gpt2jax backend vs lm-eval's own `hf` backend (PyTorch), on the same
random weights saved in HF format, the same tasks, documents and batch size, in one run.

    GPT2JAX_DATA_DIR=../shared/data python bench/lm_eval.py [--limit 200] [--batch 8] [--repeats 3]
    python bench/lm_eval.py --n_layer 2 --n_embd 64 --n_head 2 --n_positions 128 --limit 8

Default shape: GPT-2 124M (12 layers, 768 wide, 1024 positions). Tasks (configs/lm_eval_tasks,
offline): lambada_openai_local (loglikelihood), wikitext_local (rolling loglikelihood) and
multiple_choice_local (4 endings per LAMBADA context, HellaSwag-like), `--limit` documents
each. The time is what the request methods take (loglikelihood / loglikelihood_rolling /
generate_until), so task building is left out. gpt2jax runs `simple_evaluate` once first
(compiling: one per bucket), then both backends alternate `--repeats` times (the order
swapped every repeat, so load from other processes hits both alike); the ratio is the median
of the per-repeat ratios (hf / gpt2jax: > 1 means gpt2jax is faster). Also printed: forward
rows each backend ran, the load average before and after, and the largest relative metric
difference (the backends must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package it benchmarks: drop bench/ from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from configs import common  # noqa: E402
from bench import hardware  # noqa: E402
from gpt2jax.eval import harness  # noqa: E402
from gpt2jax.parallel import distributed, sharding  # noqa: E402
from gpt2jax.eval.lambada import read_lambada  # noqa: E402

TASKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "lm_eval_tasks"
METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def make_model(args, folder: Path, data: Path) -> None:
    """Random GPT-2 weights of the asked shape + an offline GPT-2 tokenizer, in `folder`."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd,
                                  n_head=args.n_head, n_positions=args.n_positions)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    shutil.copy(data / "gpt2" / "encoder.json", folder / "vocab.json")
    shutil.copy(data / "gpt2" / "vocab.bpe", folder / "merges.txt")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2Tokenizer"}))


def make_data(folder: Path, data: Path, docs: int) -> None:
    """LAMBADA and WikiText-2 (links) and a multiple-choice file made from LAMBADA."""
    for name in ("lambada/lambada_test.jsonl", "wikitext-2-raw/wiki.test.raw"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(data / name)
    texts = read_lambada(data / "lambada" / "lambada_test.jsonl")[-(docs + 3):]
    words = [t.rsplit(" ", 1)[1] for t in texts]
    (folder / "multiple_choice").mkdir()
    with open(folder / "multiple_choice" / "test.jsonl", "w") as f:
        for i in range(docs):
            f.write(json.dumps({"query": texts[i].rsplit(" ", 1)[0], "choices": words[i:i + 4],
                                "gold": i % 4}) + "\n")


def timed(lm) -> dict:
    """Wraps lm's request methods to add their seconds to the returned dict."""
    seconds = {"total": 0.0}

    def wrap(fn):
        def timed_fn(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds["total"] += time.perf_counter() - start
        return timed_fn

    for name in METHODS:
        setattr(lm, name, wrap(getattr(lm, name)))
    return seconds


def run(lm, tasks, manager, limit) -> tuple[float, dict]:
    seconds = timed(lm)
    res = harness.evaluate(lm, tasks, manager, limit=limit)
    for name in METHODS:  # unwrap: the next run wraps afresh
        delattr(lm, name)
    return seconds["total"], {(r["task"], r["metric"]): r["value"]
                              for r in harness.result_rows(res)}


def count_hf_rows(hf) -> dict:
    """Counts the rows of every forward pass of lm-eval's hf backend (its `_model_call`)."""
    rows = {"rows": 0}
    call = hf._model_call

    def counted(inps, *a, **k):
        rows["rows"] += inps.shape[0]
        return call(inps, *a, **k)

    hf._model_call = counted
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_positions", type=int, default=1024)
    p.add_argument("--limit", type=int, default=200, help="documents per task")
    p.add_argument("--batch", type=int, default=8, help="rows per forward, both backends")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs of each backend")
    p.add_argument("--cpu_devices", type=int, default=0,
                   help="split the CPU into N JAX devices, rows data-parallel (0: one device)")
    p.add_argument("--tasks", default="lambada_openai_local,wikitext_local,multiple_choice_local")
    args = p.parse_args()
    print(hardware.describe(), flush=True)
    data = Path(os.environ.get("GPT2JAX_DATA_DIR", Path(__file__).parents[2] / "shared/data"))
    tasks = args.tasks.split(",")
    distributed.set_cpu_devices(args.cpu_devices)
    mesh_config = common.mesh_config()  # data-parallel over every device
    mesh = sharding.make_mesh(mesh_config) if args.cpu_devices > 1 else None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir = Path(tmp) / "model", Path(tmp) / "data"
        make_model(args, model_dir, data)
        make_data(data_dir, data, args.limit)
        manager = harness.task_manager(str(TASKS_DIR), data_dir, include_defaults=False)
        hf = HFLM(pretrained=str(model_dir), batch_size=args.batch, device="cpu",
                  dtype="float32")
        hf_rows = count_hf_rows(hf)
        ours = harness.GPT2JaxLM(pretrained=str(model_dir), batch_size=args.batch,
                                 progress=False, mesh=mesh,
                                 axis_rules=sharding.rules(mesh_config) if mesh else ())
        first_s, _ = run(ours, tasks, manager, args.limit)
        times, metrics = {"hf": [], "gpt2jax": []}, {}
        for i in range(args.repeats):
            for name in ("hf", "gpt2jax")[::1 if i % 2 == 0 else -1]:
                secs, metrics[name] = run(hf if name == "hf" else ours, tasks, manager,
                                          args.limit)
                times[name].append(secs)
    rows = {"hf": hf_rows["rows"] // args.repeats,
            "gpt2jax": ours.scorer.rows_run // (args.repeats + 1)}
    report(args, tasks, times, first_s, rows, metrics, (load_before, os.getloadavg()))


def report(args, tasks, times, first_s, rows, metrics, loads) -> None:
    """Prints the table: seconds (median of the repeats), rows, ratios, metric agreement."""
    hf_s, our_s = statistics.median(times["hf"]), statistics.median(times["gpt2jax"])
    ratio = statistics.median(h / o for h, o in zip(times["hf"], times["gpt2jax"]))
    hf_m, our_m = metrics["hf"], metrics["gpt2jax"]
    worst = max(abs(our_m[k] - v) / max(abs(v), 1e-12) for k, v in hf_m.items())
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, torch threads "
          f"{torch.get_num_threads()}; GPT-2 {args.n_layer}x{args.n_embd} ctx "
          f"{args.n_positions}, random weights; tasks {','.join(tasks)}, {args.limit} docs "
          f"each, batch {args.batch}, {args.repeats} alternated repeats")
    print("load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} "
          "{:.2f}".format(*loads[0], *loads[1]))
    print(f"{'backend':<30}{'seconds':>10}{'rows':>8}   each repeat")
    print(f"{'lm-eval hf (torch)':<30}{hf_s:>10.1f}{rows['hf']:>8}   "
          + " ".join(f"{t:.1f}" for t in times["hf"]))
    print(f"{'gpt2jax, first (compiles)':<30}{first_s:>10.1f}{rows['gpt2jax']:>8}")
    print(f"{'gpt2jax, steady':<30}{our_s:>10.1f}{rows['gpt2jax']:>8}   "
          + " ".join(f"{t:.1f}" for t in times["gpt2jax"]))
    print(f"ratio hf / gpt2jax: {ratio:.2f}x steady (median of repeats), "
          f"{hf_s / first_s:.2f}x first run incl. compiles")
    print(f"largest relative metric difference: {worst:.2e} over {len(hf_m)} metrics")
    for key in sorted(hf_m):
        print(f"  {key[0]:<24}{key[1]:<18}hf {hf_m[key]:<14.6g}gpt2jax {our_m[key]:.6g}")


if __name__ == "__main__":
    main()
