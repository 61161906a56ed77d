"""The GPT-2 124M recipes (configs/gpt2.py:fineweb10b and :owt) end to end on a local parquet.

The README's commands (checked to be there verbatim) run through `run.py`'s entry point in a
fresh folder, with a parquet corpus in place of the hub dataset and a tiny model appended as
overrides: prepare -> 20 training steps with val loss and, for fineweb10b, a HellaSwag-format
task through the lm-eval backend at each evaluation -> `--mode=eval` on that task. The
projected wall times of the docstring and README are recomputed from the config's numbers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from configs import gpt2
from helpers import REPO, cli_env, corpus_documents, hellaswag_rows, write_parquet

README = (REPO / "README.md").read_text(encoding="utf-8")
PREPARE = ("--mode=prepare", "--config=configs/prepare_hf.py:parquet",
           "--config.data.hf_data_files='corpus/*.parquet'")
TINY = ("--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=32",
        "--config.model.n_positions=32", "--config.train.block_size=32",
        "--config.train.batch_size=8", "--config.train.grad_accum_steps=2",
        "--config.train.num_steps=20", "--config.train.lr_decay_steps=20",
        "--config.train.warmup_steps=2", "--config.train.eval_every=10",
        "--config.train.eval_batches=2", "--config.train.peak_flops=1e12",
        "--config.train.progress_bar=false", "--config.train.export_hf=false",
        "--config.checkpoint.save_every=20")
HELLASWAG = ("--config.train.lm_eval.tasks=hellaswag_local", "--config.train.lm_eval.limit=4",
             "--config.train.lm_eval.data_dir=lm_data")

# Forks one child per argv from one interpreter that imported run.py (imports paid once);
# a child runs exactly what `python run.py ARGV` runs, output to its log.
_ZYGOTE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import run
    from absl import app
    from gpt2jax.cli.config_check import parse_flags
    import gpt2jax.cli.train, gpt2jax.cli.prepare, gpt2jax.cli.eval, gpt2jax.eval.harness
    codes = []
    for argv, log in json.loads(sys.argv[2]):
        with open(log, "wb") as f:
            pid = os.fork()
            if pid == 0:
                os.dup2(f.fileno(), 1)
                os.dup2(f.fileno(), 2)
                sys.argv = ["run.py"] + argv
                try:
                    app.run(run.main, flags_parser=parse_flags)
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                sys.stdout.flush()
                os._exit(code)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        if codes[-1]:
            break
    print(json.dumps(codes))
""")


def _readme_has(*args: str) -> None:
    """`python run.py ARGS` is written in the README (backslash line breaks joined)."""
    text = re.sub(r"\\\n\s*", "", README)
    assert "python run.py " + " ".join(args) in text, args


def _run(cwd: Path, argvs: list[list[str]]) -> list[str]:
    """Runs the argvs in order in `cwd`; returns their outputs (asserts they all exit 0)."""
    logs = [cwd / f"cmd{i}.log" for i in range(len(argvs))]
    spec = json.dumps([[[a.replace("configs/", f"{REPO}/configs/") for a in argv], str(log)]
                       for argv, log in zip(argvs, logs)])
    proc = subprocess.run([sys.executable, "-c", _ZYGOTE, str(REPO), spec], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    outs = [log.read_text(errors="replace") for log in logs[:len(codes)]]
    assert codes == [0] * len(argvs), outs[-1][-3000:]
    return outs


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir) -> Path:
    """A fresh folder with corpus/*.parquet (real text) and lm_data/hellaswag/*.jsonl."""
    root = tmp_path_factory.mktemp("recipe")
    for i in range(2):
        write_parquet(root / "corpus" / f"part-{i}.parquet", corpus_documents(data_dir, 80, i))
    (root / "lm_data" / "hellaswag").mkdir(parents=True)
    (root / "lm_data" / "hellaswag" / "hellaswag_val.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in hellaswag_rows(data_dir, 4)))
    return root


@pytest.mark.slow  # five run.py commands, two 20-step trainings: ~45 s idle, ~105 s at load 7
def test_fineweb10b_and_owt_end_to_end_on_local_parquet(folder):
    fineweb = ("--mode=train", "--config=configs/gpt2.py:fineweb10b", "--workdir=runs/fineweb10b")
    owt = ("--mode=train", "--config=configs/gpt2.py:owt", "--workdir=runs/owt")
    evaluate = ("--mode=eval", "--config=configs/eval.py:lm_eval",
                "--config.init_from=runs/fineweb10b", "--config.eval.tasks=hellaswag")
    for args in (PREPARE, fineweb, evaluate, owt, ("--mode=prepare",
                                                   "--config=configs/prepare_hf.py:fineweb10b")):
        _readme_has(*args)
    data_flags = ("--config.data.tokens_per_shard=20000", "--config.data.val_fraction=0.1")
    outs = _run(folder, [
        [*PREPARE[:2], "--config.data.hf_data_files=corpus/*.parquet",
         "--config.data.shards_dir=data/fineweb10b", *data_flags],
        [*fineweb, *TINY, *HELLASWAG],
        [*evaluate[:3], "--config.eval.tasks=hellaswag_local", "--config.data_dir=lm_data",
         "--config.eval.limit=4", "--config.eval.include_defaults=false",
         "--config.eval.progress=false", "--output_json=eval.json"],
        [*PREPARE[:2], "--config.data.hf_data_files=corpus/*.parquet",
         "--config.data.shards_dir=data/owt", *data_flags],
        [*owt, *TINY, "--config.train.eval_batches=2"],
    ])
    assert "from 0.9 of the documents of hf:parquet/train" in outs[0]
    records = _records(folder / "runs" / "fineweb10b")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 10 and losses[-1] < losses[0]  # it learns from the shards
    for step in (10, 20):  # llm.c's evaluation: val loss and HellaSwag at each one
        at = {k: v for r in records if r.get("step") == step for k, v in r.items()}
        assert math.isfinite(at["val_loss"]), at
        assert 0 <= at["lm_eval/hellaswag_local/acc_norm"] <= 1, at
    rows = json.loads((folder / "eval.json").read_text())["rows"]
    assert {r["metric"] for r in rows if r["task"] == "hellaswag_local"} >= {"acc", "acc_norm"}
    owt_records = _records(folder / "runs" / "owt")
    assert any(r.get("step") == 20 and math.isfinite(r.get("val_loss", math.nan))
               for r in owt_records)


def test_recipes_hold_their_anchors_and_projections():
    fw, owt = gpt2.get_config("fineweb10b"), gpt2.get_config("owt")
    assert fw.train.batch_size * fw.train.block_size == 524_288  # llm.c's -d 524288
    assert fw.train.num_steps == 18_865 and fw.train.warmup_steps == 700
    assert fw.train.min_learning_rate == 0.0 and fw.train.lm_eval.tasks == "hellaswag"
    assert owt.train.batch_size * owt.train.block_size == 491_520  # nanoGPT: 12 x 40 x 1024
    assert owt.train.num_steps == 600_000 and owt.train.min_learning_rate == 6e-5
    for c in (fw, owt):
        assert c.model.vocab_size == 50304 and c.model.n_layer == 12 and c.data.source == "shards"
        assert c.model.embd_pdrop == c.model.attn_pdrop == c.model.resid_pdrop == 0.0
    doc = re.sub(r"\s+", " ", gpt2.__doc__)
    for name, machine, text in (("fineweb10b", "H200", "fineweb10b {:.1f} h"),
                                ("owt", "H200", "owt {:.1f} days"),
                                ("fineweb10b", "TPU v4-8", "fineweb10b {:.1f} h"),
                                ("owt", "TPU v5e-8", "owt {:.1f} days")):
        hours = gpt2.projected_hours(name, machine)
        want = text.format(hours / 24 if "days" in text else hours)
        assert want in doc, (want, machine)
    table = re.sub(r"\s+", " ", README)
    assert (f"| {gpt2.projected_hours('fineweb10b'):.1f} h | "
            f"{gpt2.projected_hours('fineweb10b', 'TPU v4-8'):.1f} h / "
            f"{gpt2.projected_hours('fineweb10b', 'TPU v5e-8'):.1f} h |") in table
