"""`load_pretrained("gpt2")` through the real huggingface_hub client and its own cache.

A tiny random GPT-2 saved by transformers is served by `hub_stand_in.HubStandIn` on
127.0.0.1 (HF_ENDPOINT); loads run in a fresh interpreter because huggingface_hub reads
HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE when it is imported. The reference is the
transformers model itself: its logits, and the cache transformers itself fills.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers

from gpt2jax.errors import WeightsError
from gpt2jax.weights.pretrained import load_pretrained
from hub_stand_in import COMMIT, HubStandIn

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=32)
IDS = [[5, 17, 99, 3, 64, 127, 0, 42]]
DEAD = "http://127.0.0.1:9"  # nothing listens there: every request is refused

# Loads each name of argv[2:] with load_pretrained and writes its logits for IDS (or the
# WeightsError message) into the JSON file argv[1].
_LOADER = """
import json, sys
import numpy as np
from gpt2jax import GPT2
from gpt2jax.errors import WeightsError
from gpt2jax.weights.pretrained import load_pretrained
out = {}
for name in sys.argv[2:]:
    try:
        cfg, params = load_pretrained(name)
    except WeightsError as e:
        out[name] = str(e)
        continue
    logits = GPT2(cfg).apply({"params": params}, np.asarray(%r, np.int32))
    out[name] = np.asarray(logits).tolist()
json.dump(out, open(sys.argv[1], "w"))
""" % (IDS,)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(reference model, stand-in hub serving it as openai-community/gpt2, `gpt2` renamed)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)).eval()
    single = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(single)
    sharded = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    server = HubStandIn({"openai-community/gpt2": single, "me/gpt2-sharded": sharded},
                        renames={"gpt2": "openai-community/gpt2"})
    yield model, server
    server.close()


def _reference(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


def _run(code: str, args: list[str], cache: Path, endpoint: str, offline: bool) -> None:
    """Runs `code` in a fresh interpreter with the hub's environment (read at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE=str(int(offline)),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cache.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _load(names: list[str], cache: Path, endpoint: str, offline: bool) -> dict:
    """{name: logits [1, T, V] as lists, or the WeightsError message} from load_pretrained."""
    out = cache.parent / "out.json"
    _run(_LOADER, [str(out), *names], cache, endpoint, offline)
    return json.loads(out.read_text())


def _assert_logits(got, model) -> None:
    assert not isinstance(got, str), got
    np.testing.assert_allclose(np.asarray(got), _reference(model), atol=2e-5, rtol=0)


def _cached_files(cache: Path) -> dict[str, set[str]]:
    """repo_id -> file names in its snapshots, as huggingface_hub's own scanner sees them."""
    info = huggingface_hub.scan_cache_dir(cache)
    return {repo.repo_id: {f.file_name for rev in repo.revisions for f in rev.files}
            for repo in info.repos}


def test_hub_name_downloads_into_the_hf_cache_then_loads_offline(hub, tmp_path):
    model, server = hub
    cache = tmp_path / "hub"
    got = _load(["gpt2", "me/gpt2-sharded", "me/not-there"], cache, server.url, offline=False)
    _assert_logits(got["gpt2"], model)
    _assert_logits(got["me/gpt2-sharded"], model)
    assert "'me/not-there'" in got["me/not-there"] and "pass a local path" in got["me/not-there"]
    fetched = server.files_fetched()
    assert sorted(f for f in fetched if f.startswith("openai")) == [
        "openai-community/gpt2/config.json", "openai-community/gpt2/model.safetensors"]
    shards = json.loads((cache / "models--me--gpt2-sharded" / "snapshots" / COMMIT
                         / "model.safetensors.index.json").read_text())["weight_map"].values()
    assert {f for f in fetched if f.startswith("me/")} == {
        "me/gpt2-sharded/config.json", "me/gpt2-sharded/model.safetensors.index.json",
        *(f"me/gpt2-sharded/{s}" for s in shards)}
    files = _cached_files(cache)
    assert files["gpt2"] == {"config.json", "model.safetensors"}
    assert (cache / "models--gpt2" / "refs" / "main").read_text() == COMMIT

    seen = len(server.requests)
    again = _load(["gpt2", "me/gpt2-sharded"], cache, DEAD, offline=True)
    _assert_logits(again["gpt2"], model)
    _assert_logits(again["me/gpt2-sharded"], model)
    assert len(server.requests) == seen  # nothing asked of the hub


def test_a_transformers_cache_serves_gpt2_under_either_name(hub, tmp_path):
    model, server = hub
    cache = tmp_path / "hub"
    # transformers fills the cache as a user's `from_pretrained` does
    _run("import transformers; transformers.GPT2LMHeadModel.from_pretrained("
         "'openai-community/gpt2')", [], cache, server.url, offline=False)
    assert "openai-community/gpt2/model.safetensors" in server.files_fetched()
    assert set(_cached_files(cache)) == {"openai-community/gpt2"}

    seen = len(server.requests)
    # no HF_HUB_OFFLINE, the hub unreachable: a laptop on a train
    got = _load(["gpt2", "openai-community/gpt2"], cache, DEAD, offline=False)
    _assert_logits(got["gpt2"], model)
    _assert_logits(got["openai-community/gpt2"], model)
    assert len(server.requests) == seen
    assert set(_cached_files(cache)) == {"openai-community/gpt2"}  # nothing fetched twice


def test_hub_name_without_huggingface_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as without the `hub` extra
    with pytest.raises(WeightsError, match=r"'gpt2'.*needs huggingface_hub.*\[hub\].*local path"):
        load_pretrained("gpt2")
