"""`python run.py --mode=eval --config=configs/eval.py:TASK [--config.init_from=PATH_OR_NAME]
[--config.data_dir=DIR] [--output_json=FILE | --workdir=DIR]`: evaluate one task.

Prints a table of result rows and writes them as JSON (to --output_json, else
WORKDIR/eval_TASK.json when --workdir is given).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from gpt2jax.parallel import sharding
from gpt2jax.eval import tasks
from gpt2jax.nn.model import GPT2Config, init_params
from gpt2jax.data.bpe import get_tokenizer
from gpt2jax.training.checkpoint import load_params_for_inference
from gpt2jax.weights.pretrained import load_pretrained

REPO = Path(__file__).resolve().parents[2]


def load_model(config) -> tuple[GPT2Config, dict]:
    """(cfg, params) from `config.init_from` (HF dir/file/hub name, or a training workdir),
    else a random init of `config.model` with `config.seed` (for smoke tests).

    As in generation, `config.model.dtype` and `config.model.attention_impl` apply to loaded
    models too (evaluation defaults to the `xla` kernel, see configs/eval.py)."""
    source = config.init_from
    if not source:
        cfg = GPT2Config.from_config(config.model)
        return cfg, init_params(cfg, jax.random.key(config.seed))
    overrides = dict(dtype=config.model.dtype, attention_impl=config.model.attention_impl)
    if (Path(source) / "checkpoints").is_dir():

        cfg, params, _ = load_params_for_inference(source, **overrides)
        return cfg, params

    return load_pretrained(source, **overrides)


def make_mesh(mesh_config):
    """The eval mesh; fixed sizes whose product is below the device count use the first
    devices (e.g. `--config.mesh.data=1` evaluates on one device)."""
    sizes = (mesh_config.data, mesh_config.fsdp, mesh_config.tensor)
    devices = jax.devices()
    if -1 not in sizes:
        devices = devices[: math.prod(sizes)]
    return sharding.make_mesh(mesh_config, devices)


def resolve_data_dir(config) -> str:
    """The explicit data folder, or "" (files then come from gpt2jax.data.resolve's search:
    $GPT2JAX_DATA_DIR, the cache, a checksummed download)."""
    return config.data_dir


def format_table(rows: list[dict]) -> str:
    """A fixed-width table: task, protocol, metric, value, tokens/examples."""
    header = f"{'task':<16}{'protocol':<14}{'metric':<15}{'value':>12}  {'count':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        count = r.get("tokens", r.get("examples", ""))
        lines.append(f"{r['task']:<16}{r['protocol']:<14}{r['metric']:<15}"
                     f"{r['value']:>12.4f}  {count:>10}")
    return "\n".join(lines)


def lm_eval_rows(config, progress: bool | None = None) -> list[dict]:
    """`configs/eval.py:lm_eval`: lm-eval tasks on the gpt2jax backend; lm-eval's metrics
    as result rows. Needs the optional `eval` extra (lm-eval)."""
    from gpt2jax.eval import harness  # optional dependency: lm-eval

    e = config.eval
    data_dir = resolve_data_dir(config)
    tokenizer_file = Path(data_dir) / "gpt2" / "gpt2.tiktoken" if data_dir else None
    cfg, params = load_model(config)
    lm = harness.GPT2JaxLM(
        cfg=cfg, params=params, batch_size=e.batch_size, max_length=e.max_length or None,
        max_gen_toks=e.max_gen_toks, mesh=make_mesh(config.mesh),
        axis_rules=sharding.rules(config.mesh), seed=config.seed,
        tokenizer=tokenizer_file if tokenizer_file and tokenizer_file.is_file() else None,
        progress=e.progress if progress is None else progress)
    manager = harness.task_manager(e.include_path or None, data_dir, e.include_defaults)
    results = harness.evaluate(lm, harness.task_names(e.tasks, manager), manager,
                               limit=e.limit, num_fewshot=None if e.num_fewshot < 0 else
                               e.num_fewshot)
    return harness.result_rows(results)


def evaluate_config(config, progress: bool | None = None) -> list[dict]:
    """Runs `config.eval.task` as the config says; returns the result rows."""
    if config.eval.task == "lm_eval":
        return lm_eval_rows(config, progress)
    tasks.check_task(config.eval.task)
    data_dir = resolve_data_dir(config)
    tokenizer_file = Path(data_dir) / "gpt2" / "gpt2.tiktoken" if data_dir else None
    enc = get_tokenizer(tokenizer_file if tokenizer_file and tokenizer_file.is_file() else None)
    cfg, params = load_model(config)
    mesh = make_mesh(config.mesh)
    ctx = tasks.TaskContext(
        config.eval.task, cfg, params, enc, config.eval, data_dir, mesh=mesh,
        axis_rules=sharding.rules(config.mesh),
        progress=config.eval.progress if progress is None else progress,
        generate_config=config.generate, seed=config.seed,
    )
    return tasks.run_task(ctx)


def main(config, args) -> list[dict]:
    """Evaluates, prints the table, writes the JSON; returns the rows."""
    rows = evaluate_config(config)
    print(format_table(rows), flush=True)
    out = args.output_json
    if not out and args.workdir:
        out = str(Path(args.workdir) / f"eval_{config.eval.task}.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"task": config.eval.task, "init_from": config.init_from, "rows": rows}
        Path(out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {out}", flush=True)
    return rows
