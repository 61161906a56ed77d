"""`python run.py --mode=eval --config=configs/eval.py:TASK [--config.init_from=PATH_OR_NAME]
[--config.data_dir=DIR] [--output_json=FILE | --workdir=DIR]`: evaluate one task.

Prints a table of result rows and writes them as JSON (to --output_json, else
WORKDIR/eval_TASK.json when --workdir is given); the generation tasks also write every
example (prompt, reference, output, its scores) as jsonl beside it (`X.json` ->
`X.examples.jsonl`). The model, and the tokenizer it is evaluated with, come from
`gpt2jax.weights.loader` (a training workdir brings its own tokenizer: a char model is scored
on characters). A task's files are found before the model loads (`tasks.check_inputs`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

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


TABLE_COLUMNS = ("task", "protocol", "context", "metric", "value", "count")


def format_table(rows: list[dict]) -> str:
    """A table of result rows: task, protocol, context (the evaluation length, when a run
    evaluates several), metric, value, tokens/examples; each column as wide as its widest
    cell, two spaces between columns (text left-, numbers right-aligned)."""
    cells = [[str(r["task"]), str(r["protocol"]), str(r.get("context_length", "")),
              str(r["metric"]), f"{r['value']:.4f}",
              str(r.get("tokens", r.get("examples", "")))] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(TABLE_COLUMNS)]

    def line(values) -> str:
        return "  ".join(v.rjust(w) if name in ("context", "value", "count") else v.ljust(w)
                         for name, v, w in zip(TABLE_COLUMNS, values, widths))

    header = line(TABLE_COLUMNS)
    return "\n".join([header, "-" * len(header)] + [line(c) for c in cells])


def lm_eval_rows(config, progress: bool | None = None, explicit=()) -> list[dict]:
    """`configs/eval.py:lm_eval`: lm-eval tasks on the gpt2jax backend; lm-eval's metrics
    as result rows. Needs the optional `eval` extra (lm-eval)."""
    from gpt2jax.eval import harness  # optional dependency: lm-eval

    e = config.eval
    data_dir = resolve_data_dir(config)
    cfg, params, tokenizer = model_for_config(config, ranks_file(config), explicit)
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


def evaluate_config(config, progress: bool | None = None, explicit=()) -> list[dict]:
    """Runs `config.eval.task` as the config says; returns the result rows."""
    return evaluate(config, progress, explicit)[0]


def evaluate(config, progress: bool | None = None,
             explicit=()) -> tuple[list[dict], list[dict]]:
    """Runs `config.eval.task`; returns (result rows, per-example records: the generation
    tasks' prompts, references and outputs; [] for the others). `explicit`: the config keys
    set on the command line (a model override the loaded model fixes is refused)."""
    if config.eval.task == "lm_eval":
        return lm_eval_rows(config, progress, explicit), []
    data_dir = resolve_data_dir(config)
    tasks.check_inputs(config.eval.task, config.eval, data_dir)  # before a model loads
    cfg, params, tokenizer = model_for_config(config, ranks_file(config), explicit)
    mesh = make_mesh(config.mesh)
    ctx = tasks.TaskContext(
        config.eval.task, cfg, params, tokenizer, config.eval, data_dir, mesh=mesh,
        axis_rules=sharding.rules(config.mesh),
        progress=config.eval.progress if progress is None else progress,
        generate_config=config.generate, seed=config.seed,
    )
    rows = tasks.run_task(ctx)
    return rows, ctx.examples


def examples_path(out: str) -> Path:
    """Where the per-example records of the results JSON `out` go: `X.json` ->
    `X.examples.jsonl` (any other name gets `.examples.jsonl` appended)."""
    path = Path(out)
    stem = path.name[:-len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + ".examples.jsonl")


def main(config, args) -> list[dict]:
    """Evaluates, prints the table, writes the JSON (and the examples' jsonl); returns the
    rows."""
    rows, examples = evaluate(config, explicit=args.config_overrides)
    print(format_table(rows), flush=True)
    out = args.output_json
    if not out and args.workdir:
        out = str(Path(args.workdir) / f"eval_{config.eval.task}.json")
    if not out:
        if examples:
            print(f"({len(examples)} examples' prompts, references and outputs are written "
                  "with --output_json=FILE or --workdir=DIR)", flush=True)
        return rows
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    payload = {"task": config.eval.task, "init_from": config.init_from, "rows": rows}
    if examples:
        path = examples_path(out)
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples),
                        encoding="utf-8")
        payload["examples_file"] = str(path)
        print(f"wrote {path} ({len(examples)} examples: prompt, reference, output)", flush=True)
    Path(out).write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}", flush=True)
    return rows
