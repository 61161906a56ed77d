"""A catalogue of bad inputs, through the API and through the CLI (`run.py`).

Each case builds its inputs in a fresh directory (the case's workdir), then feeds the bad
input. It passes when:
- API: a typed `GPT2JaxError` subclass is raised whose message names the problem and the fix
  (the `expect` fragments, case-insensitive);
- CLI: the exit status is non-zero, stderr holds exactly one line (no traceback) and that
  line names the problem and the fix;
- both: the workdir tree (names, sizes, bytes) is identical before and after.

CLI cases run through `app.run(run.main, flags_parser=parse_flags)`, which is exactly what
`python run.py` executes, in processes forked from one "zygote" that imported run.py once
(a fresh `python run.py` costs seconds of imports per case on the 2-core CI machine); the
first CLI case is additionally run as a real `python run.py` subprocess to show that both
paths agree. `experiments/reliability/run_catalogue.py` turns the recorded messages into a
table.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from gpt2jax.errors import GPT2JaxError

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 120


# ----------------------------------------------------------------------------- the catalogue


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input. `make(work)` builds it in the case directory `work` and returns:
    API: a zero-argument callable that must raise `error`; CLI: the argv after `run.py`."""

    id: str
    surface: str  # "api" | "cli"
    what: str  # the bad input, for the table
    make: Callable
    expect: tuple[str, ...]  # fragments that name the problem and the fix
    error: type = GPT2JaxError


CASES: list[Case] = []


def case(id: str, surface: str, what: str, expect: tuple[str, ...], error: type = GPT2JaxError):
    """Decorator that registers `make` as a catalogue case."""

    def register(make: Callable) -> Callable:
        CASES.append(Case(id, surface, what, make, tuple(e.lower() for e in expect), error))
        return make

    return register


def tree_hash(root: Path) -> str:
    """sha256 over every path, type, size and content under `root` (the workdir's identity)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            h.update(f"L {rel} -> {os.readlink(path)}\n".encode())
        elif path.is_dir():
            h.update(f"D {rel}\n".encode())
        else:
            h.update(f"F {rel} {path.stat().st_size}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def tree_change(root: Path, before: set[str]) -> str:
    """What appeared (+) or disappeared (-) under `root` since the listing `before`."""
    after = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    return ", ".join([f"+{p}" for p in sorted(after - before)] +
                     [f"-{p}" for p in sorted(before - after)]) or "file contents changed"


def tree_paths(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ----------------------------------------------------------------------------- helpers


def tiny_model_config(**overrides):
    from gpt2jax.nn.model import GPT2Config

    fields = dict(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    fields.update(overrides)
    return GPT2Config(**fields)


def save_tiny(directory: Path, **overrides) -> Path:
    """A valid tiny HF-layout model (config.json + model.safetensors) in `directory`."""
    import jax

    from gpt2jax.nn.model import init_params
    from gpt2jax.weights.pretrained import save_pretrained

    cfg = tiny_model_config(**overrides)
    return save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(0)), directory)


def rewrite_safetensors(path: Path, edit: Callable[[dict], None]) -> None:
    """Loads `path`, applies `edit(state)` in place, saves it back."""
    from safetensors.numpy import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def load(path, **kw):
    from gpt2jax.weights.pretrained import load_pretrained

    return lambda: load_pretrained(path, **kw)


def tiny_cli(*extra: str) -> list[str]:
    """argv for a tiny model from configs/gpt2.py (keeps every CLI case cheap)."""
    return ["--config=configs/gpt2.py:small", "--config.model.n_layer=1",
            "--config.model.n_embd=8", "--config.model.n_head=2", *extra]


def _malicious_pickle(path: Path, victim: Path) -> None:
    """A pickle that creates `victim` when unpickled (what an untrusted .bin can do)."""
    import pickle

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (victim,))

    path.write_bytes(pickle.dumps({"wte.weight": Exploit()}))


# ----------------------------------------------------------------------------- config: API


@case("config-unknown-key-api", "api", "config.model.n_layr (typo) vs the config file",
      ("unknown config key", "model.n_layr", "did you mean", "n_layer"))
def _(work):
    from configs import gpt2
    from gpt2jax.cli.config_check import check_config

    config = gpt2.get_config("small")
    config.model.n_layr = 2
    return lambda: check_config(config, gpt2.get_config("small"))


@case("config-wrong-type-api", "api", "config.model.n_layer = '12' (a str)",
      ("model.n_layer", "must be a int", "got str"))
def _(work):
    from configs import gpt2
    from gpt2jax.cli.config_check import check_config

    import ml_collections

    raw = gpt2.get_config("small").to_dict()  # e.g. a config rebuilt from JSON
    raw["model"]["n_layer"] = "12"
    config = ml_collections.ConfigDict(raw)
    return lambda: check_config(config, gpt2.get_config("small"))


@case("model-heads-not-dividing", "api", "n_embd=10, n_head=3",
      ("not divisible by n_head", "choose n_embd"))
def _(work):
    return lambda: tiny_model_config(n_embd=10, n_head=3)


@case("model-zero-layers", "api", "n_layer=0", ("n_layer", "positive int"))
def _(work):
    return lambda: tiny_model_config(n_layer=0)


@case("model-bad-dropout", "api", "attn_pdrop=1.5", ("attn_pdrop", "[0, 1)"))
def _(work):
    return lambda: tiny_model_config(attn_pdrop=1.5)


@case("model-bad-dtype", "api", "dtype='float64'", ("dtype", "choose one of"))
def _(work):
    return lambda: tiny_model_config(dtype="float64")


@case("mesh-device-mismatch-api", "api", "mesh data=3 on 8 devices",
      ("8 are available", "product is 8"))
def _(work):
    from gpt2jax.parallel.sharding import mesh_shape

    return lambda: mesh_shape(3, 1, 1, num_devices=8)


@case("mesh-two-wildcards", "api", "mesh data=-1, fsdp=-1", ("only one mesh axis may be -1",))
def _(work):
    from gpt2jax.parallel.sharding import mesh_shape

    return lambda: mesh_shape(-1, -1, 1, num_devices=8)


# ----------------------------------------------------------------------------- weights: API


@case("safetensors-truncated", "api", "model.safetensors cut to half its bytes",
      ("not a readable safetensors", "truncated", "again"))
def _(work):
    model = save_tiny(work / "model")
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return load(model)


@case("safetensors-header-past-eof", "api", "header length field larger than the file",
      ("not a readable safetensors", "again"))
def _(work):
    model = save_tiny(work / "model")
    f = model / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(data) + 10) + data[8:])
    return load(model)


@case("safetensors-header-too-large", "api", "header length 2**40 (> the 100 MB bound)",
      ("not a readable safetensors", "again"))
def _(work):
    model = save_tiny(work / "model")
    f = model / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 2**40) + f.read_bytes()[8:])
    return load(model)


@case("safetensors-header-not-json", "api", "header bytes are not JSON",
      ("not a readable safetensors", "again"))
def _(work):
    model = save_tiny(work / "model")
    f = model / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    f.write_bytes(data[:8] + b"{" * n + data[8 + n:])
    return load(model)


@case("safetensors-overlapping-offsets", "api", "two tensors claim the same bytes",
      ("not a readable safetensors", "again"))
def _(work):
    model = save_tiny(work / "model")
    f = model / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]
    raw = json.dumps(header).encode().ljust(n)
    f.write_bytes(data[:8] + raw[:n] + data[8 + n:])
    return load(model)


@case("tensor-wrong-shape", "api", "h.0.mlp.c_fc.weight saved as [8, 16] instead of [8, 32]",
      ("h.0.mlp.c_fc.weight", "shape"))
def _(work):
    import numpy as np

    model = save_tiny(work / "model")
    rewrite_safetensors(model / "model.safetensors", lambda s: s.update(
        {"transformer.h.0.mlp.c_fc.weight": np.zeros((8, 16), np.float32)}))
    return load(model)


@case("tensor-missing", "api", "h.0.ln_1.weight deleted", ("h.0.ln_1.weight", "missing"))
def _(work):
    model = save_tiny(work / "model")
    rewrite_safetensors(model / "model.safetensors", lambda s: s.pop("transformer.h.0.ln_1.weight"))
    return load(model)


@case("weights-wrong-vocab", "api", "config.json says vocab 64, wte has 50 rows",
      ("vocabulary mismatch", "vocab_size=50"))
def _(work):
    model = save_tiny(work / "model")
    hf = json.loads((model / "config.json").read_text())
    hf["vocab_size"] = 64
    (model / "config.json").write_text(json.dumps(hf))
    return load(model)


@case("weights-config-json-corrupt", "api", "config.json is not JSON",
      ("config.json", "not valid json", "re-download"))
def _(work):
    model = save_tiny(work / "model")
    (model / "config.json").write_text("{not json")
    return load(model)


@case("weights-unknown-format", "api", "weights file model.npz",
      ("unknown weights format", ".safetensors"))
def _(work):
    (work / "model.npz").write_bytes(b"PK\x03\x04")
    return load(work / "model.npz", n_head=2)


@case("weights-missing-path", "api", "init_from a path that does not exist",
      ("does not exist", "pass a model directory"))
def _(work):
    return load(work / "no" / "such" / "dir")


@case("weights-dir-without-weights", "api", "a directory with only notes.txt",
      ("no gpt-2 weights", "expected one of"))
def _(work):
    (work / "model").mkdir()
    (work / "model" / "notes.txt").write_text("hello")
    return load(work / "model")


@case("pickle-without-permission", "api", "pytorch_model.bin without allow_pickle=True",
      ("pickle", "allow_pickle=true", "safetensors"))
def _(work):
    (work / "model").mkdir()
    _malicious_pickle(work / "model" / "pytorch_model.bin", work / "pwned")
    return load(work / "model")


@case("save-into-nonempty-dir", "api", "save_pretrained over an existing model",
      ("exists and is not empty", "overwrite=true"))
def _(work):
    import jax

    from gpt2jax.nn.model import init_params
    from gpt2jax.weights.pretrained import save_pretrained

    model = save_tiny(work / "model")
    cfg = tiny_model_config()
    params = init_params(cfg, jax.random.PRNGKey(1))
    return lambda: save_pretrained(cfg, params, model)


# ----------------------------------------------------------------------------- tokenizer: API


@case("tokenizer-wrong-hash", "api", "ranks file with one rank changed",
      ("sha256", "not the gpt-2 ranks", "original gpt2.tiktoken"))
def _(work):
    from gpt2jax.data.bpe import load_ranks

    src = Path(os.environ["GPT2JAX_DATA_DIR"]) / "gpt2" / "gpt2.tiktoken"
    lines = src.read_bytes().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    (work / "gpt2.tiktoken").write_bytes(b"".join(lines))
    return lambda: load_ranks(work / "gpt2.tiktoken")


@case("tokenizer-missing", "api", "ranks file path that does not exist",
      ("does not exist", "gpt2.tiktoken", "GPT2JAX_TIKTOKEN_RANKS"))
def _(work):
    from gpt2jax.data.bpe import get_encoding

    return lambda: get_encoding(work / "missing.tiktoken")


# ----------------------------------------------------------------------------- data: API


def data_cfg(train_file, **overrides):
    from configs import common

    return common.data_config(train_file=str(train_file), tokenizer="char", prefetch=0,
                              **overrides)


def datasets(cfg, block_size=8, batch=4, process_count=1):
    from gpt2jax.data import build_datasets

    return lambda: build_datasets(cfg, block_size, batch, seed=0, process_index=0,
                                  process_count=process_count)


@case("data-missing", "api", "train_file that does not exist",
      ("does not exist", "config.data.train_file", "existing path"))
def _(work):
    return datasets(data_cfg(work / "missing.txt"))


@case("data-glob-no-match", "api", "train_file glob matching nothing",
      ("no file matches", "check the glob"))
def _(work):
    return datasets(data_cfg(work / "*.nothing"))


@case("data-empty", "api", "an empty train file", ("is empty", "contains text"))
def _(work):
    (work / "empty.txt").write_text("")
    return datasets(data_cfg(work / "empty.txt"))


@case("data-binary", "api", "a binary (non-UTF-8) train file",
      ("not valid utf-8", "encoding_errors='replace'"))
def _(work):
    (work / "blob.txt").write_bytes(bytes(range(256)) * 4)
    return datasets(data_cfg(work / "blob.txt"))


@case("data-too-short", "api", "train text shorter than one block (block_size 64)",
      ("fewer than one block", "smaller block_size"))
def _(work):
    (work / "short.txt").write_text("To be, or not to be: that is the question.\n")
    return datasets(data_cfg(work / "short.txt"), block_size=64)


@case("data-batch-not-divisible", "api", "global batch 5 over 2 processes",
      ("does not divide", "5"))
def _(work):
    (work / "ok.txt").write_text("To be, or not to be: that is the question.\n" * 20)
    return datasets(data_cfg(work / "ok.txt"), batch=5, process_count=2)


@case("data-shards-missing", "api", "source=shards in a folder without meta.json",
      ("meta.json", "does not exist", "prepare"))
def _(work):
    (work / "shards").mkdir()
    return datasets(data_cfg("", source="shards", shards_dir=str(work / "shards")))


# ----------------------------------------------------------------------------- generation: API


@functools.lru_cache(maxsize=1)
def tiny_params():
    import jax

    from gpt2jax.nn.model import init_params

    return init_params(tiny_model_config(), jax.random.PRNGKey(0))


def gen(ids=((1, 2, 3),), **kwargs):
    from gpt2jax.generation.generate import generate

    return lambda: generate(tiny_model_config(), tiny_params(), list(ids), **kwargs)


@case("prompt-too-long", "api", "12-token prompt + 8 new tokens, context 16",
      ("exceeds the model context", "shorten the prompt"))
def _(work):
    return gen(ids=[list(range(12))], max_new_tokens=8)


@case("generate-top-p", "api", "top_p=1.5", ("top_p=1.5", "(0, 1]"))
def _(work):
    return gen(do_sample=True, top_p=1.5, max_new_tokens=2)


@case("generate-zero-beams", "api", "num_beams=0", ("num_beams=0", "use 1"))
def _(work):
    return gen(num_beams=0, max_new_tokens=2)


@case("generate-zero-temperature", "api", "temperature=0 with do_sample",
      ("temperature=0", "> 0"))
def _(work):
    return gen(do_sample=True, temperature=0.0, max_new_tokens=2)


@case("generate-too-many-returns", "api", "num_return_sequences=3 with greedy search",
      ("num_return_sequences", "do_sample=true"))
def _(work):
    return gen(num_return_sequences=3, max_new_tokens=2)


@case("generate-unknown-arg", "api", "generate(..., top_q=0.9)",
      ("unknown generate arguments", "top_q", "supported"))
def _(work):
    return gen(top_q=0.9, max_new_tokens=2)


@case("generate-empty-prompt", "api", "an empty prompt", ("non-empty prompt",))
def _(work):
    return gen(ids=[[]], max_new_tokens=2)


# ----------------------------------------------------------------------------- training: API


def train_cfg(work, **train):
    from test_crash_safety import tiny_config

    (work / "text.txt").write_text(SHAKESPEARE_LINE * 40)
    config = tiny_config(str(work / "text.txt"), num_steps=4)
    config.train.batch_size = 8  # 8 simulated devices in the pytest process
    config.train.update(train)
    return config


def train(config, workdir):
    from gpt2jax.training.loop import train_and_evaluate

    return lambda: train_and_evaluate(config, workdir)


def fake_checkpoint(workdir: Path, **model) -> None:
    """A finalized Orbax checkpoint (step 3) of another tiny model, as a run would leave it."""
    import jax.numpy as jnp

    from gpt2jax.training.checkpoint import Checkpointer

    ck = Checkpointer(workdir, keep=3, keep_best=0, async_save=False)
    ck.save(3, {"params": {"wte": jnp.zeros((4, 4))}}, {"position": 0},
            {"model": tiny_model_config(**model).to_dict(), "tokenizer": {"name": "char"}})
    ck.close()


SHAKESPEARE_LINE = "First Citizen: Before we proceed any further, hear me speak.\n"


@case("train-batch-not-divisible", "api", "train.batch_size=6 on 8 data-parallel devices",
      ("not divisible by the data-parallel size 8", "multiple of 8"))
def _(work):
    return train(train_cfg(work, batch_size=6), work / "run")


@case("train-block-too-long", "api", "train.block_size=64 > model.n_positions=32",
      ("exceeds model.n_positions", "lower the block size"))
def _(work):
    return train(train_cfg(work, block_size=64), work / "run")


@case("train-vocab-too-small", "api", "model.vocab_size=10 for a 30-character corpus",
      ("model.vocab_size=10", "--config.model.vocab_size="))
def _(work):
    config = train_cfg(work)
    config.model.vocab_size = 10
    return train(config, work / "run")


@case("workdir-other-model", "api", "workdir holds a checkpoint with n_embd=8, config n_embd=16",
      ("different model", "n_embd", "new --workdir"))
def _(work):
    fake_checkpoint(work / "run", vocab_size=65, n_positions=32, n_embd=8, n_layer=1,
                    n_head=2)
    return train(train_cfg(work), work / "run")


@case("workdir-under-a-file", "api", "workdir below a regular file (fails even for root)",
      ("workdir", "not a directory", "writable"))
def _(work):
    (work / "afile").write_text("x")
    return train(train_cfg(work), work / "afile" / "run")


# ----------------------------------------------------------------------------- config: CLI


@case("config-unknown-key-cli", "cli", "--config.model.n_layr=2",
      ("unknown config key", "did you mean 'model.n_layer'"))
def _(work):
    return tiny_cli("--config.model.n_layr=2", f"--workdir={work}")


@case("config-unknown-section-cli", "cli", "--config.modle.n_layer=2",
      ("unknown config key", "did you mean 'model'"))
def _(work):
    return tiny_cli("--config.modle.n_layer=2", f"--workdir={work}")


@case("config-wrong-int-cli", "cli", "--config.model.n_layer=two",
      ("not a valid int", "--config.model.n_layer="))
def _(work):
    return ["--config=configs/gpt2.py:small", "--config.model.n_layer=two", f"--workdir={work}"]


@case("config-wrong-bool-cli", "cli", "--config.generate.do_sample=maybe",
      ("not a valid bool", "do_sample=true"))
def _(work):
    return tiny_cli("--config.generate.do_sample=maybe", f"--workdir={work}")


@case("config-section-as-value-cli", "cli", "--config.model=3",
      ("is a section", "override one of its keys"))
def _(work):
    return tiny_cli("--config.model=3", f"--workdir={work}")


@case("config-wrong-tuple-cli", "cli", "--config.mesh.rules=3 (rules are (name, axes) pairs)",
      ("--config.mesh.rules", "not a valid tuple", "('batch', ('data', 'fsdp'))"))
def _(work):
    return train_cli(work, "--config.mesh.rules=3")


@case("config-file-missing-cli", "cli", "--config=configs/nope.py",
      ("does not exist", "--config=configs/gpt2.py:small"))
def _(work):
    return ["--config=configs/nope.py", f"--workdir={work}"]


@case("config-file-bad-arg-cli", "cli", "--config=configs/gpt2.py:smal",
      ("unknown gpt-2 size", "choose one of"))
def _(work):
    return ["--config=configs/gpt2.py:smal", f"--workdir={work}"]


@case("unknown-flag-cli", "cli", "--bogus=1", ("unknown command line flag", "--helpshort"))
def _(work):
    return tiny_cli("--bogus=1", f"--workdir={work}")


@case("impossible-shape-cli", "cli", "--config.model.n_head=5 with n_embd=128",
      ("not divisible by n_head", "choose n_embd"))
def _(work):
    return train_cli(work, "--config.model.n_head=5")


def prepare_cli(work, train_file, *extra):
    return ["--mode=prepare", "--config=configs/prepare_shakespeare.py:char",
            f"--config.data.train_file={train_file}",
            f"--config.data.shards_dir={work / 'shards'}", f"--workdir={work}", *extra]


@case("data-missing-cli", "cli", "prepare from a missing text file",
      ("does not exist", "config.data.train_file"))
def _(work):
    return prepare_cli(work, work / "missing.txt")


@case("data-binary-cli", "cli", "prepare from a binary file",
      ("not valid utf-8", "encoding_errors"))
def _(work):
    (work / "blob.bin").write_bytes(bytes(range(256)) * 4)
    return prepare_cli(work, work / "blob.bin")


@case("data-empty-cli", "cli", "prepare from an empty file", ("is empty", "contains text"))
def _(work):
    (work / "empty.txt").write_text("   \n")
    return prepare_cli(work, work / "empty.txt")


def train_cli(work, *extra):
    return ["--mode=train", "--config=configs/shakespeare_char.py:cpu",
            f"--workdir={work / 'run'}", *extra]


@case("mesh-device-mismatch-cli", "cli", "--config.mesh.data=3 on 8 devices",
      ("8 are available", "product is 8"))
def _(work):
    return train_cli(work, "--config.mesh.data=3")


@case("train-batch-not-divisible-cli", "cli", "--config.train.batch_size=12 on 8 devices",
      ("not divisible by the data-parallel size 8", "multiple of 8"))
def _(work):
    return train_cli(work, "--config.train.num_steps=2")


@case("workdir-other-model-cli", "cli", "--workdir holding another model's checkpoint",
      ("different model", "new --workdir"))
def _(work):
    fake_checkpoint(work / "run", vocab_size=65, n_positions=32, n_embd=8, n_layer=1,
                    n_head=2)
    return train_cli(work, "--config.mesh.data=-1")


@case("workdir-under-a-file-cli", "cli", "--workdir below a regular file",
      ("workdir", "not a directory"))
def _(work):
    (work / "afile").write_text("x")
    return ["--mode=train", "--config=configs/shakespeare_char.py:cpu",
            f"--workdir={work / 'afile' / 'run'}"]


def generate_cli(*extra):
    return ["--mode=generate", "--config=configs/gpt2.py:small", *extra]


@case("pickle-without-permission-cli", "cli", "--config.init_from=DIR with pytorch_model.bin",
      ("pickle", "safetensors"))
def _(work):
    (work / "model").mkdir()
    _malicious_pickle(work / "model" / "pytorch_model.bin", work / "pwned")
    return generate_cli(f"--config.init_from={work / 'model'}", "--prompt=hi")


@case("safetensors-truncated-cli", "cli", "--config.init_from=DIR with a truncated file",
      ("not a readable safetensors", "again"))
def _(work):
    model = save_tiny(work / "model")
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return generate_cli(f"--config.init_from={model}", "--prompt=hi")


@case("prompt-file-missing-cli", "cli", "--prompt_file that does not exist",
      ("does not exist", "one prompt per line"))
def _(work):
    return generate_cli("--config.model.n_layer=1", f"--prompt_file={work / 'nope.txt'}")


@case("prompt-and-file-cli", "cli", "both --prompt and --prompt_file",
      ("exactly one of",))
def _(work):
    (work / "p.txt").write_text("hello\n")
    return generate_cli("--config.model.n_layer=1", "--prompt=hi",
                        f"--prompt_file={work / 'p.txt'}")


@case("generate-bad-top-p-cli", "cli", "--config.generate.top_p=1.5 with do_sample",
      ("top_p=1.5", "(0, 1]"))
def _(work):
    return tiny_cli("--mode=generate", "--prompt=hi", "--config.generate.do_sample=true",
                    "--config.generate.top_p=1.5")


# ----------------------------------------------------------------------------- running cases

ZYGOTE = textwrap.dedent(
    """
    import json, os, signal, sys, traceback
    sys.path.insert(0, os.getcwd())
    import run
    from absl import app
    from gpt2jax.cli.config_check import parse_flags
    for name in ("jax", "gpt2jax.nn.model", "gpt2jax.weights.pretrained", "gpt2jax.cli.generate",
                 "gpt2jax.cli.train", "gpt2jax.cli.eval", "gpt2jax.cli.prepare"):
        try:
            __import__(name)
        except ImportError:
            pass
    results = []
    for c in json.load(sys.stdin):
        with open(c["log"], "wb") as log:
            pid = os.fork()
            if pid == 0:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                signal.alarm(c["timeout"])
                sys.argv = ["run.py"] + c["argv"]  # config_flags reads overrides from here
                try:
                    app.run(run.main, flags_parser=parse_flags)
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
        results.append(os.waitstatus_to_exitcode(status))
    print(json.dumps(results))
    """
)


def run_cli_batch(argvs: list[list[str]], logs: list[Path]) -> list[tuple[int, str]]:
    """Runs each argv through run.py's entry point in a forked child: [(exit code, output)]."""
    spec = [{"argv": a, "log": str(log), "timeout": CLI_TIMEOUT_S} for a, log in zip(argvs, logs)]
    proc = subprocess.run(
        [sys.executable, "-c", ZYGOTE], input=json.dumps(spec), cwd=REPO, capture_output=True,
        text=True, timeout=CLI_TIMEOUT_S * 2 + 30 * len(argvs),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return [(code, log.read_text(errors="replace")) for code, log in zip(codes, logs)]


def _user_lines(output: str) -> list[str]:
    """Output lines without absl/jax log lines (`I1128 ...`, `W1128 ...`) or blank lines."""
    import re

    log_line = re.compile(r"^[IWEF]\d{4} ")
    return [ln for ln in output.splitlines() if ln.strip() and not log_line.match(ln)]


@pytest.fixture(scope="session")
def cli_results(tmp_path_factory):
    """Builds every CLI case and runs them all in one zygote: id -> (code, output, workdir
    hash before, after, argv)."""
    cli = [c for c in CASES if c.surface == "cli"]
    root = tmp_path_factory.mktemp("cli_cases")
    argvs, logs, works, before, paths = [], [], [], [], []
    for c in cli:
        work = root / c.id
        work.mkdir()
        (work / "keep.txt").write_text("a file that must survive")
        argvs.append(c.make(work))
        logs.append(root / f"{c.id}.log")
        works.append(work)
        before.append(tree_hash(work))
        paths.append(tree_paths(work))
    outs = run_cli_batch(argvs, logs)
    results = {}
    for c, (code, out), b, w, a, p in zip(cli, outs, before, works, argvs, paths):
        after = tree_hash(w)
        results[c.id] = (code, out, b, after, a, tree_change(w, p) if after != b else "")
    return results


@pytest.mark.parametrize("c", [c for c in CASES if c.surface == "api"], ids=lambda c: c.id)
def test_api_case(c: Case, tmp_path, record_property):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("a file that must survive")
    record_property("what", c.what)
    call = c.make(work)
    before, paths = tree_hash(work), tree_paths(work)
    try:
        call()
    except Exception as e:  # noqa: BLE001  (recorded for the table, then checked)
        record_property("message", f"{type(e).__name__}: {e}")
        if tree_hash(work) != before:
            record_property("workdir_change", tree_change(work, paths))
        raise_as = e
    else:
        raise_as = None
    assert raise_as is not None, "no error was raised"
    message = str(raise_as)
    assert isinstance(raise_as, c.error) and isinstance(raise_as, GPT2JaxError), repr(raise_as)
    for fragment in c.expect:
        assert fragment in message.lower(), (fragment, message)
    assert tree_hash(work) == before, f"the workdir changed: {tree_change(work, paths)}"
    assert not (work / "pwned").exists()


@pytest.mark.parametrize("c", [c for c in CASES if c.surface == "cli"], ids=lambda c: c.id)
def test_cli_case(c: Case, cli_results, record_property):
    code, output, before, after, _, change = cli_results[c.id]
    record_property("what", c.what)
    lines = _user_lines(output)
    record_property("message", " | ".join(lines)[:300])
    if change:
        record_property("workdir_change", change)
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    for fragment in c.expect:
        assert fragment in lines[0].lower(), (fragment, output)
    assert after == before, f"the workdir changed: {change}"


def test_real_subprocess_agrees_with_zygote(cli_results):
    """`python run.py ...` prints the same line and exits the same as the forked entry point."""
    c = next(c for c in CASES if c.surface == "cli")
    code, output, _, _, argv, _ = cli_results[c.id]
    proc = subprocess.run([sys.executable, "run.py", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert proc.returncode == code == 2
    assert _user_lines(proc.stderr + proc.stdout) == _user_lines(output)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.surface for c in CASES} == {"api", "cli"}
