"""The bad-input catalogue's machinery, shared by test_bad_inputs_api.py and _cli.py.

A `Case` is one bad input as data: its id, what it is (for the table), `make(work)` that builds
it in a fresh case directory `work`, and the message fragments that name the problem and the
fix. `experiments/reliability/run_catalogue.py` turns the recorded messages into a table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np

from configs import common
from gpt2jax.data.prepare import prepare_shards
from gpt2jax.errors import GPT2JaxError
from gpt2jax.training.checkpoint import Checkpointer
from helpers import MICRO, tiny_config

KEEP = "keep.txt"  # a file every case directory holds and that must survive


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input. `make(work)` builds it in the case directory `work` and returns:
    API: a zero-argument callable that must raise `error`; CLI: the argv after `run.py`.
    `expect`: fragments (any case) that name the problem and the fix."""

    id: str
    what: str  # the bad input, for the table
    make: Callable
    expect: tuple[str, ...]
    error: type = GPT2JaxError

    def __post_init__(self):
        object.__setattr__(self, "expect", tuple(e.lower() for e in self.expect))


def case_dir(root: Path) -> Path:
    """`root` created, holding the KEEP file (so an emptied or replaced directory shows)."""
    root.mkdir()
    (root / KEEP).write_text("a file that must survive")
    return root


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


def tree_paths(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def tree_change(root: Path, before: set[str]) -> str:
    """What appeared (+) or disappeared (-) under `root` since the listing `before`."""
    after = tree_paths(root)
    return ", ".join([f"+{p}" for p in sorted(after - before)] +
                     [f"-{p}" for p in sorted(before - after)]) or "file contents changed"


def check_ids(cases: list[Case], cli: bool) -> None:
    """Ids are unique, and end in '-cli' exactly for the CLI surface (so the two files' ids
    never collide either)."""
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), ids
    assert all(i.endswith("-cli") == cli for i in ids), ids


def truncate(model: Path, size: int | None = None) -> Path:
    """Cuts `model`/model.safetensors to `size` bytes (default: half); returns `model`."""
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2 if size is None else size])
    return model


def fake_checkpoint(workdir: Path, **model) -> None:
    """A finalized Orbax checkpoint (step 3) of another tiny model, as a run would leave it."""
    ck = Checkpointer(workdir, keep=3, keep_best=0, async_save=False)
    ck.save(3, {"params": {"wte": jnp.zeros((4, 4))}}, {"position": 0},
            {"model": tiny_config(**{**MICRO, **model}).to_dict(), "tokenizer": {"name": "char"}})
    ck.close()


# The checkpoint of another model that the workdir-other-model cases leave in the workdir.
OTHER_MODEL = dict(vocab_size=65, n_positions=32, n_embd=8, n_layer=1, n_head=2)


# ----------------------------------------------------------------------------- token shards
# A small char-level shards folder (3 train shards of <= 1,000 tokens + 1 val shard) and the
# damage a real cluster does to one: a disk-full or killed prepare, a truncated copy, a hand
# edit. Every case must be refused at open in one line naming the file and --mode=prepare.

SHARDS_TEXT = "First Citizen: Before we proceed any further, hear me speak.\n" * 40


def prepared_shards(work: Path, tokenizer: str = "char", name: str = "shards") -> Path:
    """`work/name`: SHARDS_TEXT (written to work/text.txt) prepared as char or gpt2 shards."""
    (work / "text.txt").write_text(SHARDS_TEXT)
    cfg = common.data_config(train_file=str(work / "text.txt"), tokenizer=tokenizer,
                             shards_dir=str(work / name), tokens_per_shard=1000)
    prepare_shards(cfg, progress=False)
    return work / name


def edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """damage(folder): meta.json loaded, `edit(meta)` applied, written back."""
    def damage(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        edit(meta)
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return damage


def cut_file(name: str, size: int | Callable[[int], int]) -> Callable[[Path], None]:
    """damage(folder): folder/name cut to `size` bytes (or size(old size))."""
    def damage(folder: Path) -> None:
        f = folder / name
        data = f.read_bytes()
        f.write_bytes(data[: size(len(data)) if callable(size) else size])
    return damage


def ids_outside_vocab(folder: Path) -> None:
    """train_00000.bin rewritten (same size) with id 200, past the ~30-character vocabulary."""
    f = folder / "train_00000.bin"
    f.write_bytes(np.full(f.stat().st_size // 2, 200, np.uint16).tobytes())


def swap_shards(folder: Path) -> None:
    """train_00000.bin and train_00001.bin (both 1,000 tokens) exchanged."""
    a, b = folder / "train_00000.bin", folder / "train_00001.bin"
    data_a = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data_a)


def drop_char(meta: dict) -> None:
    """The tokenizer in meta.json loses its last character (ids past it stay in the shards)."""
    tok = meta["tokenizer"]
    tok["chars"] = tok["chars"][:-1]
    tok["vocab_size"] -= 1


def new_shards_under_old_meta(folder: Path) -> None:
    """What a re-prepare (gpt2 over char) killed before it rewrote meta.json used to leave:
    the new train shards under the old meta.json."""
    other = prepared_shards(folder.parent, "gpt2", name="gpt2_shards")
    for f in other.glob("train_*.bin"):
        shutil.copy(f, folder / f.name)
    shutil.rmtree(other)


def interrupted_prepare(folder: Path) -> None:
    """meta.json gone and a prepare's progress folder left: a prepare was killed mid-way."""
    (folder / "meta.json").unlink()
    (folder / "prepare.partial").mkdir()
    (folder / "prepare.partial" / "state.json").write_text("{}")


# (case id, what, damage, message fragments): each gives one API and one CLI case.
SHARD_DAMAGE = [
    ("shards-meta-empty", "0-byte meta.json (a prepare that hit a full disk)",
     cut_file("meta.json", 0), ("meta.json", "not valid json", "--mode=prepare")),
    ("shards-meta-cut-short", "meta.json cut to half its bytes",
     cut_file("meta.json", lambda n: n // 2), ("meta.json", "not valid json", "--mode=prepare")),
    ("shards-meta-missing-key", "meta.json without its 'dtype'",
     edit_meta(lambda m: m.pop("dtype")), ("meta.json", "'dtype'", "missing", "--mode=prepare")),
    ("shards-meta-unknown-dtype", "meta.json dtype 'float7'",
     edit_meta(lambda m: m.update(dtype="float7")), ("meta.json", "float7", "--mode=prepare")),
    ("shards-meta-not-an-object", "meta.json holding a JSON list",
     lambda f: (f / "meta.json").write_text("[1, 2]"),
     ("meta.json", "--mode=prepare")),
    ("shards-shard-odd-size", "train_00001.bin cut to an odd number of bytes",
     cut_file("train_00001.bin", 1001), ("train_00001.bin", "bytes", "--mode=prepare")),
    ("shards-shard-empty", "train_00000.bin emptied (0 bytes)",
     cut_file("train_00000.bin", 0), ("train_00000.bin", "0 bytes", "--mode=prepare")),
    ("shards-shard-missing", "train_00002.bin deleted",
     lambda f: (f / "train_00002.bin").unlink(), ("train_00002.bin", "missing",
                                                  "--mode=prepare")),
    ("shards-ids-outside-vocab", "train_00000.bin rewritten with id 200 (vocabulary ~30)",
     ids_outside_vocab, ("train_00000.bin", "sha256", "--mode=prepare")),
    ("shards-swapped", "train_00000.bin and train_00001.bin swapped", swap_shards,
     ("train_00000.bin", "sha256", "--mode=prepare")),
    ("shards-vocab-below-ids", "meta.json's tokenizer loses a character the shards use",
     edit_meta(drop_char), ("meta.json", "token id", "vocabulary", "--mode=prepare")),
    ("shards-old-meta-new-shards", "gpt2 train shards under the char meta.json (killed "
     "re-prepare)", new_shards_under_old_meta, ("train_00000.bin", "--mode=prepare")),
    ("shards-interrupted-prepare", "no meta.json, a prepare.partial/ progress folder",
     interrupted_prepare, ("meta.json", "interrupted", "--mode=prepare")),
]
