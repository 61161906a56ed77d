"""The bad-input catalogue, API surface, for malformed files and folders a cluster run meets
(issue 27): model files whose JSON is not what it claims, weights holding NaN/inf, a
read-only workdir, a folder or a pipe where a data file belongs. Each case runs exactly as
test_bad_inputs_api.py's (`catalogue.run_api_case`): a typed one-line error naming the
problem and the fix, and the case directory unchanged.

The read-only workdir is a real read-only tmpfs (root in the test containers; the case skips
where mounting is not allowed), mounted only while the case's call runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from catalogue import Case, char_vocabulary, check_ids, run_api_case
from configs import common
from gpt2jax.data import build_datasets
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.weights.loader import load_model
from gpt2jax.weights.pretrained import load_pretrained
from helpers import MICRO, char_run_config, save_tiny, tiny_config, tiny_params, tmpfs

LINE = "First Citizen: Before we proceed any further, hear me speak.\n"


# ----------------------------------------------------------------------------- model files


def loading(damage):
    """make(work): a valid tiny model in work/model, `damage(model)`, then load it."""
    def make(work):
        model = save_tiny(work / "model")
        damage(model)
        return lambda: load_pretrained(model)
    return make


def config_json(content: str):
    def damage(model: Path):
        (model / "config.json").write_text(content)
    return damage


def config_field(**fields):
    def damage(model: Path):
        hf = json.loads((model / "config.json").read_text())
        hf.update(fields)
        (model / "config.json").write_text(json.dumps(hf))
    return damage


def sharded(index: object):
    """The weights as one shard behind a model.safetensors.index.json holding `index`."""
    def damage(model: Path):
        (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return damage


def non_finite(name: str, value: float):
    def damage(model: Path):
        state = load_file(str(model / "model.safetensors"))
        state[name][0, :3] = value
        save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    return damage


def checkpoint_with_inf(work):
    """A training workdir whose only checkpoint holds an inf in wte (a damaged save)."""
    cfg = tiny_config(**MICRO)
    params = jax.tree.map(np.array, jax.device_get(tiny_params(cfg)))  # writable copies
    params["wte"]["embedding"][1, 2] = np.inf
    ck = Checkpointer(work / "run", keep=1, keep_best=0, async_save=False)
    ck.save(3, {"params": params}, {"position": 0},
            {"model": cfg.to_dict(), "tokenizer": char_vocabulary(LINE)})
    ck.close()
    return lambda: load_model(work / "run")


# ----------------------------------------------------------------------------- folders


def read_only_workdir(work):
    """train_and_evaluate into an existing workdir on a read-only disk (even root cannot
    write there: the lock file is the first write)."""
    (work / "text.txt").write_text(LINE * 40)
    (work / "ro").mkdir()

    def call():
        with tmpfs(work / "ro", 1 << 20, read_only=True):
            train_and_evaluate(char_run_config(work / "text.txt", 2, save_every=2), work / "ro")
    return call


def data_file(make_path):
    """make(work): build_datasets over train_file = make_path(work)."""
    def make(work):
        cfg = common.data_config(train_file=str(make_path(work)), tokenizer="char", prefetch=0)
        return lambda: build_datasets(cfg, 8, 4, seed=0, process_index=0, process_count=1)
    return make


def a_folder(work):
    (work / "texts").mkdir()
    (work / "texts" / "a.txt").write_text(LINE)
    return work / "texts"


def a_pipe(work):
    os.mkfifo(work / "pipe.txt")
    return work / "pipe.txt"


CASES = [
    Case("weights-config-json-array", "config.json is a JSON array",
         loading(config_json("[1, 2]")), ("config.json", "json array", "re-download")),
    Case("weights-config-json-null", "config.json is null", loading(config_json("null")),
         ("config.json", "json null", "re-download")),
    Case("weights-config-string-epsilon", "layer_norm_epsilon: \"tiny\"",
         loading(config_field(layer_norm_epsilon="tiny")),
         ("config.json", "layer_norm_epsilon must be a number", "string \"tiny\"", "fix")),
    Case("weights-config-string-dropout", "attn_pdrop: \"x\"",
         loading(config_field(attn_pdrop="x")),
         ("config.json", "attn_pdrop must be a number in [0, 1)", "string \"x\"")),
    Case("weights-config-fractional-layers", "n_layer: 1.5", loading(config_field(n_layer=1.5)),
         ("config.json", "n_layer must be a positive integer", "number 1.5")),
    Case("weights-index-not-object", "model.safetensors.index.json is a JSON array",
         loading(sharded(["model-00001-of-00001.safetensors"])),
         ("index.json", "not a safetensors index", "json array", "weight_map")),
    Case("weights-index-map-array", "the index's weight_map is an array",
         loading(sharded({"weight_map": ["model-00001-of-00001.safetensors"]})),
         ("index.json", "weight_map is the json array", "re-download")),
    Case("weights-index-shard-outside", "weight_map names ../x.safetensors",
         loading(sharded({"weight_map": {"transformer.wte.weight": "../x.safetensors"}})),
         ("index.json", "../x.safetensors", "not the name of a file beside the index")),
    Case("weights-nan", "NaN in h.0.mlp.c_fc.weight of model.safetensors",
         loading(non_finite("transformer.h.0.mlp.c_fc.weight", np.nan)),
         ("non-finite", "h.0.mlp.c_fc.weight", "3 of 256 values", "re-download")),
    Case("weights-inf-checkpoint", "inf in wte of a workdir's only checkpoint",
         checkpoint_with_inf, ("non-finite", "wte/embedding", "train again")),
    Case("workdir-read-only", "an existing workdir on a read-only disk", read_only_workdir,
         ("not writable", "read-only file system", "writable --workdir")),
    Case("data-file-is-a-folder", "config.data.train_file is a folder", data_file(a_folder),
         ("is a folder", "glob", "*.txt")),
    Case("data-file-is-a-pipe", "config.data.train_file is a named pipe", data_file(a_pipe),
         ("not a regular file", "save it to a file first")),
]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_api_case(c: Case, tmp_path, record_property):
    run_api_case(c, tmp_path, record_property)


def test_files_catalogue_ids():
    check_ids(CASES, cli=False)
