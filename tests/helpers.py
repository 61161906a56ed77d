"""Helpers shared by the tests: tiny configs and models, HF reference models converted through
gpt2jax's own converter, the `python run.py` subprocess harness and a free TCP port.

Plain functions (no fixtures: those live in conftest.py); test files import them with
`from helpers import ...` (pytest puts tests/ on sys.path). Test files do not import helpers
from each other. torch and transformers (the HF reference) are imported by the functions that
use them: the zygote's children (tests/zygote.py) import this module without paying for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np
import pytest

from configs import common, shakespeare_char

from gpt2jax.nn.model import GPT2, GPT2Config, init_cache, init_params
from gpt2jax.weights.pretrained import (config_from_hf, hf_state_dict_to_params,
                                        load_pretrained, save_pretrained)

if TYPE_CHECKING:
    import transformers

REPO = Path(__file__).resolve().parents[1]

# The default tiny shape: 2 layers, 4 heads, 64 wide, 256 tokens, 64 positions.
TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=256, n_positions=64)
# The released 124M GPT-2 shape (HF GPT2Config defaults), for full-width parity tests.
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
# The smallest valid model (1 layer, 8 wide, 50 tokens): for tests that only need a model file.
MICRO = dict(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2)


def tiny_config(**overrides) -> GPT2Config:
    """`GPT2Config` of TINY with `overrides` (any GPT2Config field) on top."""
    return GPT2Config(**{**TINY, **overrides})


def char_run_config(text_file: str | os.PathLike, num_steps: int, save_every: int,
                    async_save: bool = True, keep: int = 3) -> ml_collections.ConfigDict:
    """A training config of a 1-layer, 16-wide char model on `text_file` (batch 8: the 8
    simulated devices of the test process; no eval, no export); every other field from
    configs/common.py."""
    c = ml_collections.ConfigDict()
    c.model = common.model_config(n_layer=1, n_embd=16, n_head=2, n_positions=32,
                                  vocab_size=65, embd_pdrop=0.0, attn_pdrop=0.0,
                                  resid_pdrop=0.0)
    c.train = common.train_config(
        batch_size=8, grad_accum_steps=1, block_size=16, num_steps=num_steps,
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=2, lr_decay_steps=100,
        log_every=1, eval_every=0, peak_flops=1e12, export_hf=False, progress_bar=False)
    c.data = common.data_config(train_file=str(text_file), tokenizer="char", prefetch=0)
    c.checkpoint = common.checkpoint_config(save_every=save_every, keep=keep, keep_best=0,
                                            async_save=async_save)
    c.mesh = common.mesh_config()
    c.seed = 0
    c.init_from = ""
    return c


def char_config(text_file: str | os.PathLike, num_steps: int = 4,
                **model) -> ml_collections.ConfigDict:
    """configs/shakespeare_char.py:cpu shrunk to seconds on `text_file`: 1 layer, 2 heads, 32
    wide, 32 positions (+ `model`, any config.model key), batch 8 (the 8 simulated devices of
    the test process), block 32, the learning rate decayed over the run; no evaluation, samples,
    HF export or progress bar; one checkpoint, at the last step (keep 1, no best)."""
    c = shakespeare_char.get_config("cpu")
    c.model.update({**dict(n_layer=1, n_head=2, n_embd=32, n_positions=32), **model})
    c.data.update(train_file=str(text_file), prefetch=0)
    c.train.update(batch_size=8, block_size=32, num_steps=num_steps, lr_decay_steps=num_steps,
                   warmup_steps=1, log_every=1, eval_every=0, sample_tokens=0,
                   export_hf=False, progress_bar=False, peak_flops=1e9)
    c.checkpoint.update(save_every=num_steps, keep=1, keep_best=0)
    return c


def params_hash(params) -> str:
    """sha256 (16 hex digits) over the bytes of every leaf of a params pytree, in tree order:
    equal hashes are bit-equal params."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def tiny_params(cfg: GPT2Config, seed: int = 0):
    """Random params of `cfg`, jitted (eager flax init compiles op by op: slow on CPU)."""
    return jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))


def save_tiny(directory: Path, seed: int = 0, **overrides) -> Path:
    """A valid HF-layout model (config.json + model.safetensors) of MICRO (+ `overrides`) with
    random weights in `directory`; returns `directory`."""
    cfg = tiny_config(**{**MICRO, **overrides})
    return save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(seed)), directory)


# ----------------------------------------------------------------------------- HF reference


def decode_step_by_step(cfg: GPT2Config, params, ids, mask, positions, prefill: int):
    """Prefills `prefill` tokens, then decodes one token per call with the KV cache.

    ids, mask, positions: [B, T]. Returns (logits [B, T, V], the final cache).
    """
    import jax.numpy as jnp  # noqa: PLC0415

    cache = init_cache(cfg, *ids.shape)
    model = GPT2(cfg)
    step = jax.jit(lambda c, x, pos: model.apply({"params": params, "cache": c}, x,
                                                 attention_mask=mask, position_ids=pos,
                                                 decode=True, mutable=["cache"]))
    logits, state = step(cache, ids[:, :prefill], positions[:, :prefill])
    outs = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, state = step(state["cache"], ids[:, t:t + 1], positions[:, t:t + 1])
        outs.append(logits)
    return jnp.concatenate(outs, axis=1), state["cache"]


def hf_model(seed: int = 0, *, random_norms: bool = False, eager: bool = False,
             **config) -> transformers.GPT2LMHeadModel:
    """A random HF `GPT2LMHeadModel` of TINY (+ `config`, any HF GPT2Config field), eval mode.

    random_norms: also randomise the LayerNorm scales/biases and every bias (HF inits them to
    1 / 0, so a converter or hook that drops them would go unnoticed). eager: HF's eager
    attention (the one that returns attentions); otherwise HF's default.
    """
    import torch  # noqa: PLC0415  (the HF reference: imported where used, see below)
    import transformers  # noqa: PLC0415

    torch.manual_seed(seed)
    extra = {"attn_implementation": "eager"} if eager else {}
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**{**TINY, **config}, **extra)).eval()
    if random_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or ".ln_" in name:
                    p.add_(0.1 * torch.randn_like(p))
    return model


def to_gpt2jax(hf: transformers.GPT2LMHeadModel, **overrides):
    """(cfg, params) holding the same weights as the HF model, through gpt2jax's converter
    (`config_from_hf` + `hf_state_dict_to_params`) in memory; `overrides`: GPT2Config fields."""
    cfg = config_from_hf(hf.config.to_dict(), **overrides)
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return cfg, hf_state_dict_to_params(state, cfg)


def hf_tiny_model(seed: int = 0, **kwargs):
    """(hf model, cfg, params): `hf_model(seed, **kwargs)` and its weights in gpt2jax."""
    model = hf_model(seed, **kwargs)
    return (model, *to_gpt2jax(model))


def converted(model: transformers.GPT2LMHeadModel, path: Path, **overrides):
    """(cfg, params) of `model` through HF's save_pretrained -> gpt2jax.load_pretrained."""
    model.save_pretrained(path)
    return load_pretrained(path, **overrides)


def left_padded_batch(seed: int = 0, length: int = 12, pads: int = 4):
    """Two rows: row 0 full, row 1 left-padded by `pads`. Returns (ids, mask, positions), each
    [2, length] numpy int, positions as HF generate builds them (cumsum - 1, pads at 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY["vocab_size"], (2, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :pads] = 0
    positions = np.where(mask == 1, np.cumsum(mask, -1) - 1, 1).astype(np.int32)
    return ids, mask, positions


def hf_forward(model, ids, mask=None, positions=None, **kwargs):
    """HF forward on numpy inputs, no grad."""
    import torch  # noqa: PLC0415

    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long),
                     attention_mask=None if mask is None else torch.as_tensor(mask),
                     position_ids=None if positions is None else torch.as_tensor(
                         positions, dtype=torch.long), **kwargs)


# ----------------------------------------------------------------------------- processes


def cli_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a CPU subprocess: JAX_PLATFORMS=cpu, `devices` simulated
    CPU devices (None: XLA_FLAGS unset, i.e. one device; conftest simulates 8 in-process),
    plus `extra` variables."""
    flags = "" if devices is None else f"--xla_force_host_platform_device_count={devices}"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, **extra}


def run_cli(args: Sequence[str], *, env: Mapping[str, str] | None = None,
            cwd: Path = REPO, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python run.py *args` in `cwd` with `env` (default: this process's), text output captured.

    check: assert the exit status is 0, with the command and the tails of stdout and stderr in
    the failure message. A run past `timeout` seconds raises subprocess.TimeoutExpired.
    """
    script = "run.py" if Path(cwd) == REPO else str(REPO / "run.py")
    proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd,
                          env=dict(os.environ if env is None else env), capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"run.py {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout (tail)\n{proc.stdout[-2000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for jax.distributed coordinators)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def malicious_pickle(path: Path, victim: Path) -> None:
    """A pickle at `path` that creates `victim` when unpickled (what an untrusted .bin can do)."""

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (victim,))

    path.write_bytes(pickle.dumps({"wte.weight": Exploit()}))


# ----------------------------------------------------------------------------- files


def file_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `folder` (to show it untouched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damage_largest_array_file(step_dir: Path) -> None:
    """Inverts the first 64 bytes of the largest OCDBT data file of checkpoint `step_dir`'s
    `state` item: its headers, so TensorStore fails to decode it (a flip inside a raw,
    incompressible zstd block would change values silently, which no reader can notice
    without checksums)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[:64] = bytes(b ^ 0xFF for b in data[:64])
    biggest.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- corpora


def corpus_documents(data_dir: Path, n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` documents of real text: runs of 1-6 consecutive paragraphs of Tiny Shakespeare
    and WikiText-2 (raw test), taken at seeded random places (the text of the shared data)."""
    text = ((data_dir / "tinyshakespeare" / "input.txt").read_text() +
            (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text())
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, k = int(rng.integers(0, len(paragraphs) - 6)), int(rng.integers(1, 7))
        docs.append("\n\n".join(paragraphs[start:start + k]))
    return docs


def write_parquet(path: Path, docs: list[str], row_group_size: int = 256, **columns) -> Path:
    """`docs` as the `text` column of a parquet file (plus `columns`), like a hub shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs))), **columns}), path,
                   row_group_size=row_group_size)
    return path


def hellaswag_rows(data_dir: Path, n: int) -> list[dict]:
    """`n` (<= 6) rows in the hub's Rowan/hellaswag format from Tiny Shakespeare lines: the
    context is a line and the start of the next, the endings are the true rest and three
    other lines' ends; odd rows carry a "[title]" artifact that lm-eval's preprocess rewrites."""
    lines = [ln for ln in (data_dir / "tinyshakespeare" / "input.txt").read_text().split("\n")
             if len(ln.split()) >= 6][:40]
    rows = []
    for i in range(n):
        nxt = lines[i * 6 + 1].split()
        ends = [" ".join(lines[i * 6 + k].split()[3:]) for k in (2, 3, 4)]
        ends.insert(i % 4, " ".join(nxt[3:]))
        rows.append({"activity_label": "Shakespeare", "ctx_a": lines[i * 6],
                     "ctx_b": " ".join(nxt[:3]) + (" [title]" if i % 2 else ""),
                     "endings": ends, "label": str(i % 4)})
    return rows


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int, read_only: bool = False):
    """A tmpfs of `size_bytes` mounted at `path` (created) for the body: a small real disk
    that fills up, or (`read_only`) one that refuses every write, even root's. Needs root
    (CAP_SYS_ADMIN, as in CI and this project's test containers); where mounting is not
    allowed the test fails saying so (a skipped disk-full test would prove nothing)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} ({mounted.stderr.strip()}): the disk-full "
                    "and read-only-disk tests need root (CAP_SYS_ADMIN); run the suite as root "
                    "or in a container that allows mount", pytrace=False)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(path: Path, leave_bytes: int) -> Path:
    """Writes `path` (a ballast file) so that its disk has about `leave_bytes` free; returns
    it (delete it to free the space again)."""
    free = shutil.disk_usage(path.parent).free
    with open(path, "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
    return path
