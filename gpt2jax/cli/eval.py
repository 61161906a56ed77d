"""`python run.py --mode=eval --config=configs/eval.py:TASK [--config.init_from=PATH_OR_NAME]
[--config.data_dir=DIR] [--output_json=FILE | --workdir=DIR]`: evaluate one task.

Prints a table of result rows and writes them as JSON (to --output_json, else
WORKDIR/eval_TASK.json when --workdir is given). The model, and the tokenizer it is
evaluated with, come from `gpt2jax.weights.loader` (a training workdir brings its own
tokenizer: a char model is scored on characters).
"""

from __future__ import annotations

import math
from pathlib import Path

import jax

from gpt2jax.cli.files import check_output_file, write_json
from gpt2jax.parallel import sharding
from gpt2jax.eval import tasks
from gpt2jax.weights.loader import model_for_config

REPO = Path(__file__).resolve().parents[2]


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


def ranks_file(config) -> str:
    """`DATA_DIR/gpt2/gpt2.tiktoken` when `config.data_dir` holds it, else "" (searched)."""
    data_dir = resolve_data_dir(config)
    path = Path(data_dir) / "gpt2" / "gpt2.tiktoken" if data_dir else None
    return str(path) if path and path.is_file() else ""


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
    cfg, params, tokenizer = model_for_config(config, ranks_file(config))
    lm = harness.GPT2JaxLM(
        cfg=cfg, params=params, batch_size=e.batch_size, max_length=e.max_length or None,
        max_gen_toks=e.max_gen_toks, mesh=make_mesh(config.mesh),
        axis_rules=sharding.rules(config.mesh), seed=config.seed, tokenizer=tokenizer,
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
    cfg, params, tokenizer = model_for_config(config, ranks_file(config))
    mesh = make_mesh(config.mesh)
    ctx = tasks.TaskContext(
        config.eval.task, cfg, params, tokenizer, config.eval, data_dir, mesh=mesh,
        axis_rules=sharding.rules(config.mesh),
        progress=config.eval.progress if progress is None else progress,
        generate_config=config.generate, seed=config.seed,
    )
    return tasks.run_task(ctx)


def main(config, args) -> list[dict]:
    """Evaluates, prints the table, writes the JSON; returns the rows."""
    out, flag = args.output_json, "--output_json"
    if not out and args.workdir:
        out, flag = str(Path(args.workdir) / f"eval_{config.eval.task}.json"), "--workdir"
    # checked before the work: a result that cannot be written is known before it is computed
    target = check_output_file(out, flag) if out else None
    rows = evaluate_config(config)
    print(format_table(rows), flush=True)
    if target is not None:
        payload = {"task": config.eval.task, "init_from": config.init_from, "rows": rows}
        write_json(target, payload, flag, indent=2)
        print(f"wrote {out}", flush=True)
    return rows
