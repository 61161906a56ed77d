"""The catalogue of bad inputs through the library API (the CLI's: test_bad_inputs_cli.py).

Each case builds its inputs in a fresh directory (the case's workdir), then feeds the bad
input. It passes when a typed `GPT2JaxError` subclass is raised whose message names the
problem and the fix (the `expect` fragments, case-insensitive), and the workdir tree (names,
sizes, bytes) is identical before and after.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from catalogue import OTHER_MODEL, SHARD_DAMAGE, Case, case_dir, check_ids, fake_checkpoint
from catalogue import prepared_shards, tree_change, tree_hash, tree_paths, truncate
from configs import common, gpt2
from gpt2jax.cli.config_check import check_config
from gpt2jax.data import build_datasets
from gpt2jax.data.bpe import get_encoding, load_ranks
from gpt2jax.errors import GPT2JaxError
from gpt2jax.generation.generate import generate
from gpt2jax.nn.model import init_params
from gpt2jax.parallel.sharding import mesh_shape
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.weights.pretrained import load_pretrained, save_pretrained
from helpers import MICRO, malicious_pickle, save_tiny, tiny_config
from test_crash_safety import tiny_config as train_config

SHAKESPEARE_LINE = "First Citizen: Before we proceed any further, hear me speak.\n"


def model_config(**overrides):
    return lambda work: lambda: tiny_config(**{**MICRO, **overrides})


# ----------------------------------------------------------------------------- config


def config_with_typo(work):
    config = gpt2.get_config("small")
    config.model.n_layr = 2
    return lambda: check_config(config, gpt2.get_config("small"))


def config_with_str_layers(work):
    raw = gpt2.get_config("small").to_dict()  # e.g. a config rebuilt from JSON
    raw["model"]["n_layer"] = "12"
    config = ml_collections.ConfigDict(raw)
    return lambda: check_config(config, gpt2.get_config("small"))


def mesh(data, fsdp):
    return lambda work: lambda: mesh_shape(data, fsdp, 1, num_devices=8)


# ----------------------------------------------------------------------------- weights


def rewrite_safetensors(path: Path, edit: Callable[[dict], None]) -> None:
    """Loads `path`, applies `edit(state)` in place, saves it back."""
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def header_past_eof(model):
    f = model / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(data) + 10) + data[8:])


def header_too_large(model):
    f = model / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 2**40) + f.read_bytes()[8:])


def header_not_json(model):
    f = model / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    f.write_bytes(data[:8] + b"{" * n + data[8 + n:])


def overlapping_offsets(model):
    f = model / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]
    raw = json.dumps(header).encode().ljust(n)
    f.write_bytes(data[:8] + raw[:n] + data[8 + n:])


def wrong_shape(model):
    rewrite_safetensors(model / "model.safetensors", lambda s: s.update(
        {"transformer.h.0.mlp.c_fc.weight": np.zeros((8, 16), np.float32)}))


def missing_tensor(model):
    rewrite_safetensors(model / "model.safetensors",
                        lambda s: s.pop("transformer.h.0.ln_1.weight"))


def wrong_vocab(model):
    hf = json.loads((model / "config.json").read_text())
    hf["vocab_size"] = 64
    (model / "config.json").write_text(json.dumps(hf))


def corrupt_config_json(model):
    (model / "config.json").write_text("{not json")


def load_damaged(damage: Callable[[Path], None]):
    """make(work): a valid tiny model in work/model, `damage(model)`, then load it."""
    def make(work):
        model = save_tiny(work / "model")
        damage(model)
        return lambda: load_pretrained(model)
    return make


def load_made(build: Callable[[Path], Path], **kw):
    """make(work): load_pretrained(build(work), **kw)."""
    return lambda work: functools.partial(load_pretrained, build(work), **kw)


def npz_file(work):
    (work / "model.npz").write_bytes(b"PK\x03\x04")
    return work / "model.npz"


def notes_only(work):
    (work / "model").mkdir()
    (work / "model" / "notes.txt").write_text("hello")
    return work / "model"


def pickle_bin(work):
    (work / "model").mkdir()
    malicious_pickle(work / "model" / "pytorch_model.bin", work / "pwned")
    return work / "model"


def save_over_model(work):
    model = save_tiny(work / "model")
    cfg = tiny_config(**MICRO)
    params = init_params(cfg, jax.random.PRNGKey(1))
    return lambda: save_pretrained(cfg, params, model)


# ----------------------------------------------------------------------------- tokenizer


def swapped_ranks(work):
    src = Path(os.environ["GPT2JAX_DATA_DIR"]) / "gpt2" / "gpt2.tiktoken"
    lines = src.read_bytes().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    (work / "gpt2.tiktoken").write_bytes(b"".join(lines))
    return lambda: load_ranks(work / "gpt2.tiktoken")


# ----------------------------------------------------------------------------- data


def datasets(name: str, content: str | bytes | None = None, block_size=8, batch=4,
             process_count=1, **data):
    """make(work): build_datasets over work/`name` (written first unless content is None)."""
    def make(work):
        if isinstance(content, bytes):
            (work / name).write_bytes(content)
        elif content is not None:
            (work / name).write_text(content)
        cfg = common.data_config(train_file=str(work / name) if name else "", tokenizer="char",
                                 prefetch=0, **{k: v(work) for k, v in data.items()})
        return lambda: build_datasets(cfg, block_size, batch, seed=0, process_index=0,
                                      process_count=process_count)
    return make


def no_meta(work):
    (work / "shards").mkdir()
    return str(work / "shards")


def damaged_shards(damage: Callable[[Path], None]):
    """make(work): char shards prepared in work/shards, `damage(folder)`, then training's
    build_datasets on them."""
    def make(work):
        folder = prepared_shards(work)
        damage(folder)
        cfg = common.data_config(source="shards", shards_dir=str(folder), prefetch=0)
        return lambda: build_datasets(cfg, 8, 4, seed=0, process_index=0, process_count=1)
    return make


# ----------------------------------------------------------------------------- generation


@functools.lru_cache(maxsize=1)
def gen_params():
    return init_params(tiny_config(**MICRO), jax.random.PRNGKey(0))


def gen(ids=((1, 2, 3),), **kwargs):
    return lambda work: lambda: generate(tiny_config(**MICRO), gen_params(), list(ids),
                                         **kwargs)


# ----------------------------------------------------------------------------- training


def training(workdir: str = "run", model=None, setup=None, **train):
    """make(work): train_and_evaluate on a 4-step 1-layer char run in work/`workdir` after
    `setup(work)`; `model`, `train`: overrides of config.model / config.train."""
    def make(work):
        if setup is not None:
            setup(work)
        (work / "text.txt").write_text(SHAKESPEARE_LINE * 40)
        config = train_config(str(work / "text.txt"), num_steps=4)
        config.train.batch_size = 8  # 8 simulated devices in the pytest process
        config.train.update(train)
        config.model.update(model or {})
        return lambda: train_and_evaluate(config, work / workdir)
    return make


def a_file(work):
    (work / "afile").write_text("x")


# ----------------------------------------------------------------------------- the catalogue

CASES = [
    Case("config-unknown-key-api", "config.model.n_layr (typo) vs the config file",
         config_with_typo, ("unknown config key", "model.n_layr", "did you mean", "n_layer")),
    Case("config-wrong-type-api", "config.model.n_layer = '12' (a str)",
         config_with_str_layers, ("model.n_layer", "must be a int", "got str")),
    Case("model-heads-not-dividing", "n_embd=10, n_head=3", model_config(n_embd=10, n_head=3),
         ("not divisible by n_head", "choose n_embd")),
    Case("model-zero-layers", "n_layer=0", model_config(n_layer=0), ("n_layer", "positive int")),
    Case("model-bad-dropout", "attn_pdrop=1.5", model_config(attn_pdrop=1.5),
         ("attn_pdrop", "[0, 1)")),
    Case("model-bad-dtype", "dtype='float64'", model_config(dtype="float64"),
         ("dtype", "choose one of")),
    Case("mesh-device-mismatch-api", "mesh data=3 on 8 devices", mesh(3, 1),
         ("8 are available", "product is 8")),
    Case("mesh-two-wildcards", "mesh data=-1, fsdp=-1", mesh(-1, -1),
         ("only one mesh axis may be -1",)),
    # weights
    Case("safetensors-truncated", "model.safetensors cut to half its bytes",
         load_damaged(truncate), ("not a readable safetensors", "truncated", "again")),
    Case("safetensors-header-past-eof", "header length field larger than the file",
         load_damaged(header_past_eof), ("not a readable safetensors", "again")),
    Case("safetensors-header-too-large", "header length 2**40 (> the 100 MB bound)",
         load_damaged(header_too_large), ("not a readable safetensors", "again")),
    Case("safetensors-header-not-json", "header bytes are not JSON",
         load_damaged(header_not_json), ("not a readable safetensors", "again")),
    Case("safetensors-overlapping-offsets", "two tensors claim the same bytes",
         load_damaged(overlapping_offsets), ("not a readable safetensors", "again")),
    Case("tensor-wrong-shape", "h.0.mlp.c_fc.weight saved as [8, 16] instead of [8, 32]",
         load_damaged(wrong_shape), ("h.0.mlp.c_fc.weight", "shape")),
    Case("tensor-missing", "h.0.ln_1.weight deleted", load_damaged(missing_tensor),
         ("h.0.ln_1.weight", "missing")),
    Case("weights-wrong-vocab", "config.json says vocab 64, wte has 50 rows",
         load_damaged(wrong_vocab), ("vocabulary mismatch", "vocab_size=50")),
    Case("weights-config-json-corrupt", "config.json is not JSON",
         load_damaged(corrupt_config_json), ("config.json", "not valid json", "re-download")),
    Case("weights-unknown-format", "weights file model.npz", load_made(npz_file, n_head=2),
         ("unknown weights format", ".safetensors")),
    Case("weights-missing-path", "init_from a path that does not exist",
         load_made(lambda work: work / "no" / "such" / "dir"),
         ("does not exist", "pass a model directory")),
    Case("weights-dir-without-weights", "a directory with only notes.txt",
         load_made(notes_only), ("no gpt-2 weights", "expected one of")),
    Case("pickle-without-permission", "pytorch_model.bin without allow_pickle=True",
         load_made(pickle_bin), ("pickle", "allow_pickle=true", "safetensors")),
    Case("save-into-nonempty-dir", "save_pretrained over an existing model", save_over_model,
         ("exists and is not empty", "overwrite=true")),
    # tokenizer
    Case("tokenizer-wrong-hash", "ranks file with one rank changed", swapped_ranks,
         ("sha256", "not the gpt-2 ranks", "original gpt2.tiktoken")),
    Case("tokenizer-missing", "ranks file path that does not exist",
         lambda work: functools.partial(get_encoding, work / "missing.tiktoken"),
         ("does not exist", "gpt2.tiktoken", "GPT2JAX_TIKTOKEN_RANKS")),
    # data
    Case("data-missing", "train_file that does not exist", datasets("missing.txt"),
         ("does not exist", "config.data.train_file", "existing path")),
    Case("data-glob-no-match", "train_file glob matching nothing", datasets("*.nothing"),
         ("no file matches", "check the glob")),
    Case("data-empty", "an empty train file", datasets("empty.txt", ""),
         ("is empty", "contains text")),
    Case("data-binary", "a binary (non-UTF-8) train file",
         datasets("blob.txt", bytes(range(256)) * 4),
         ("not valid utf-8", "encoding_errors='replace'")),
    Case("data-too-short", "train text shorter than one block (block_size 64)",
         datasets("short.txt", "To be, or not to be: that is the question.\n", block_size=64),
         ("fewer than one block", "smaller block_size")),
    Case("data-batch-not-divisible", "global batch 5 over 2 processes",
         datasets("ok.txt", "To be, or not to be: that is the question.\n" * 20, batch=5,
                  process_count=2), ("does not divide", "5")),
    Case("data-shards-missing", "source=shards in a folder without meta.json",
         datasets("", source=lambda work: "shards", shards_dir=no_meta),
         ("meta.json", "does not exist", "prepare")),
    # token shards that are half-written or disagree with their metadata (catalogue.py)
    *[Case(f"{case_id}-api", what, damaged_shards(damage), expect)
      for case_id, what, damage, expect in SHARD_DAMAGE],
    # generation
    Case("prompt-too-long", "12-token prompt + 8 new tokens, context 16",
         gen(ids=[list(range(12))], max_new_tokens=8),
         ("12 prompt tokens + 8 new tokens=20 exceeds the model's n_positions=16",
          "shorten the prompt")),
    Case("generate-top-p", "top_p=1.5", gen(do_sample=True, top_p=1.5, max_new_tokens=2),
         ("top_p=1.5", "(0, 1]")),
    Case("generate-zero-beams", "num_beams=0", gen(num_beams=0, max_new_tokens=2),
         ("num_beams=0", "use 1")),
    Case("generate-zero-temperature", "temperature=0 with do_sample",
         gen(do_sample=True, temperature=0.0, max_new_tokens=2), ("temperature=0", "> 0")),
    Case("generate-too-many-returns", "num_return_sequences=3 with greedy search",
         gen(num_return_sequences=3, max_new_tokens=2),
         ("num_return_sequences", "do_sample=true")),
    Case("generate-unknown-arg", "generate(..., top_q=0.9)", gen(top_q=0.9, max_new_tokens=2),
         ("unknown generate arguments", "top_q", "supported")),
    Case("generate-empty-prompt", "an empty prompt", gen(ids=[[]], max_new_tokens=2),
         ("non-empty prompt",)),
    # training
    Case("train-batch-not-divisible", "train.batch_size=6 on 8 data-parallel devices",
         training(batch_size=6), ("not divisible by the data-parallel size 8", "multiple of 8")),
    Case("train-block-too-long", "train.block_size=64 > model.n_positions=32",
         training(block_size=64), ("exceeds model.n_positions", "lower the block size")),
    Case("train-vocab-too-small", "model.vocab_size=10 for a 30-character corpus",
         training(model={"vocab_size": 10}),
         ("model.vocab_size=10", "--config.model.vocab_size=")),
    Case("workdir-other-model", "workdir holds a checkpoint with n_embd=8, config n_embd=16",
         training(setup=lambda work: fake_checkpoint(work / "run", **OTHER_MODEL)),
         ("different model", "n_embd", "new --workdir")),
    Case("workdir-under-a-file", "workdir below a regular file (fails even for root)",
         training("afile/run", setup=a_file), ("workdir", "not a directory", "writable")),
]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_api_case(c: Case, tmp_path, record_property):
    work = case_dir(tmp_path / "work")
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


def test_api_catalogue_is_large_enough():
    """With test_bad_inputs_cli's: >= 30 cases on two surfaces, ids unique across both."""
    assert len(CASES) >= 20, len(CASES)
    check_ids(CASES, cli=False)
