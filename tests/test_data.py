"""gpt2jax.data: packing, epochs coverage, resume, multi-process slices, errors (no network)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs import common
from gpt2jax import data
from gpt2jax.data.batching import BatchIterator, windows_batch
from gpt2jax.data.shards import TokenStream
from gpt2jax.errors import ConfigError, DataError
from gpt2jax.parallel.placement import Placement

T, G = 16, 8


def _unique_stream(n: int = 1001) -> TokenStream:
    """Token i has value i, so a window's values are its positions."""
    return TokenStream([np.arange(n, dtype=np.uint16)], origin="synthetic")


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x[k], y[k]) for k in ("inputs", "targets", "weights"))
        for x, y in zip(a, b))


def _text_config(tmp_path, *files: str, **kw):
    paths = []
    for i, text in enumerate(files):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(text)
        paths.append(p)
    val = tmp_path / "val.txt"
    val.write_text("The validation text is long enough for a block or two of tokens. " * 4)
    return common.data_config(train_file=str(tmp_path / "doc*.txt"), val_file=str(val),
                              **kw)


@pytest.mark.parametrize("mode", ["random", "epochs"])
def test_targets_are_inputs_shifted_and_windows_contiguous(mode):
    stream = _unique_stream()
    it = BatchIterator(stream, T, G, seed=3, mode=mode, prefetch=0)
    for b in _take(it, 5):
        assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (G, T)
        assert b["weights"].dtype == np.float32
        real = b["weights"] > 0
        np.testing.assert_array_equal(b["targets"][real], b["inputs"][real] + 1)
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_epochs_cover_every_token_once_per_epoch():
    n = 1001 + 37  # (n - 1) % T != 0 and the last batch is partial: padding is exercised
    it = BatchIterator(_unique_stream(n), T, G, seed=0, mode="epochs", num_epochs=2)
    batches = list(it)  # StopIteration after two epochs
    assert len(batches) == 2 * it.steps_per_epoch
    orders = []
    for epoch in range(2):
        chunk = batches[epoch * it.steps_per_epoch:(epoch + 1) * it.steps_per_epoch]
        w = np.concatenate([b["weights"] for b in chunk]) > 0
        tg = np.concatenate([b["targets"] for b in chunk])[w]
        inp = np.concatenate([b["inputs"] for b in chunk])[w]
        np.testing.assert_array_equal(np.sort(tg), np.arange(1, n))   # no drop, no duplicate
        np.testing.assert_array_equal(np.sort(inp), np.arange(0, n - 1))
        orders.append(np.concatenate([b["inputs"][:, 0] for b in chunk]))
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch


def test_text_documents_joined_with_eot(tmp_path):
    docs = ["First document, about cats.\n", "Second one: dogs!\n\nTwo paragraphs.",
            "Third<|endoftext|>Fourth, split by a literal marker."]
    cfg = _text_config(tmp_path, *docs, mode="epochs", shuffle=False)
    ds = data.build_datasets(cfg, 4, 2, seed=0, process_index=0, process_count=1)
    tok = ds.tokenizer
    pieces = docs[:2] + ["Third", "Fourth, split by a literal marker."]
    expect = []
    for i, d in enumerate(pieces):
        expect += ([tok.eot_id] if i else []) + tok.encode(d)
    np.testing.assert_array_equal(ds.train_stream.to_numpy(), expect)
    first = next(ds.train)  # unshuffled epochs: the stream in order
    np.testing.assert_array_equal(first["inputs"].reshape(-1), expect[:8])


@pytest.mark.parametrize("mode", ["random", "epochs"])
def test_resume_continues_with_exactly_the_next_batch(mode):
    n, m = 7, 9  # epochs: 8 steps/epoch, so the resumed part crosses an epoch boundary
    kw = dict(mode=mode, num_epochs=0, prefetch=2)
    whole = _take(BatchIterator(_unique_stream(), T, G, seed=5, **kw), n + m)
    first = BatchIterator(_unique_stream(), T, G, seed=5, **kw)
    assert _same(_take(first, n), whole[:n])
    state = json.loads(json.dumps(first.state()))
    first.close()
    fresh = BatchIterator(_unique_stream(), T, G, seed=5, **kw)
    fresh.restore(state)
    assert _same(_take(fresh, m), whole[n:])
    other_seed = BatchIterator(_unique_stream(), T, G, seed=6, **kw)
    assert not _same(_take(other_seed, n), whole[:n])
    with pytest.raises(DataError, match="seed"):
        other_seed.restore(state)


def test_state_checkpoints_beside_the_model_with_orbax(tmp_path):
    import orbax.checkpoint as ocp

    whole = _take(BatchIterator(_unique_stream(), T, G, seed=2, mode="epochs"), 12)
    it = BatchIterator(_unique_stream(), T, G, seed=2, mode="epochs")
    _take(it, 10)
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(10, args=ocp.args.Composite(data_state=ocp.args.JsonSave(it.state())))
        mngr.wait_until_finished()
    with ocp.CheckpointManager(tmp_path) as mngr:
        restored = mngr.restore(10, args=ocp.args.Composite(
            data_state=ocp.args.JsonRestore()))["data_state"]
    fresh = BatchIterator(_unique_stream(), T, G, seed=2, mode="epochs")
    fresh.restore(restored)
    assert _same(_take(fresh, 2), whole[10:])


@pytest.mark.parametrize("mode", ["random", "epochs"])
def test_two_processes_are_disjoint_and_cover_the_epoch(mode):
    stream = _unique_stream()
    kw = dict(mode=mode, num_epochs=1, prefetch=0)
    single = BatchIterator(stream, T, G, seed=1, **kw)
    procs = [BatchIterator(stream, T, G, seed=1, process_index=p, process_count=2, **kw)
             for p in range(2)]
    steps = single.steps_per_epoch
    starts = [[], []]
    for _ in range(steps):
        whole = next(single)
        parts = [next(p) for p in procs]
        for key in ("inputs", "targets", "weights"):  # rows [p*4, p*4+4) of the global batch
            np.testing.assert_array_equal(np.concatenate([q[key] for q in parts]), whole[key])
        for p, b in enumerate(parts):
            starts[p] += b["inputs"][b["weights"][:, 0] > 0, 0].tolist()
    if mode == "epochs":
        assert not set(starts[0]) & set(starts[1])
        assert sorted(starts[0] + starts[1]) == list(range(0, len(stream) - 1, T))
        with pytest.raises(StopIteration):
            next(procs[0])


def test_val_batches_fixed_and_split_by_process(tmp_path):
    cfg = _text_config(tmp_path, "Some training text that is long enough. " * 10)
    one = data.build_datasets(cfg, 8, 4, seed=0, process_index=0, process_count=1)
    v = one.val_batches(3)
    assert len(v) == 3 and v[0]["inputs"].shape == (4, 8)
    assert _same(v, one.val_batches(3))
    halves = [data.build_datasets(cfg, 8, 4, seed=9, process_index=p, process_count=2)
              for p in range(2)]
    for b in range(3):
        got = np.concatenate([h.val_batches(3)[b]["targets"] for h in halves])
        np.testing.assert_array_equal(got, v[b]["targets"])


def test_placement_assembles_a_host_batch_on_the_mesh():
    mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
    batch = windows_batch(_unique_stream(), np.arange(8) * 3, T, 0)
    out = Placement(mesh, (("batch", ("data", "fsdp")),)).put_batch(batch)
    assert out["inputs"].shape == (8, T) and len(out["inputs"].addressable_shards) == 8
    for k in batch:
        np.testing.assert_array_equal(np.asarray(out[k]), batch[k])


def test_char_tokenizer_roundtrip_and_saved_vocabulary(tmp_path):
    text = "hello, world\nthe end."
    tok = data.CharTokenizer.from_texts([text])
    assert tok.decode(tok.encode(text)) == text and tok.eot_id is None
    data.save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = data.load_tokenizer(tmp_path / "tokenizer.json")
    assert again.chars == tok.chars
    with pytest.raises(DataError, match="not in the"):
        tok.encode("hello?")


def test_undecodable_text_reads_with_replace_and_bad_options_are_named(tmp_path):
    """encoding_errors="replace" reads a Latin-1 file (refused without it: the catalogue's
    data-binary); an unset variable in the path and an unknown mode are named. (A missing
    file, a glob matching nothing, an empty or too short file: the catalogue's data-* cases.)"""
    def build(**kw):
        cfg = common.data_config(**kw)
        return data.build_datasets(cfg, 64, 2, seed=0, process_index=0, process_count=1)

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(("caf\xe9 " * 2000).encode("latin-1"))
    ds = build(train_file=str(latin1), encoding_errors="replace")
    assert "\ufffd" in ds.tokenizer.decode(ds.train_stream.to_numpy()[:20])
    with pytest.raises(ConfigError, match="NO_SUCH_VAR"):
        build(train_file="$NO_SUCH_VAR/input.txt")
    with pytest.raises(ConfigError, match="mode"):
        build(train_file=str(latin1), encoding_errors="replace", mode="shuffled")


def test_prefetch_thread_errors_reach_the_caller():
    class Broken(TokenStream):
        def gather(self, idx):
            raise OSError("disk went away")

    it = BatchIterator(Broken([np.arange(100, dtype=np.uint16)]), T, G, seed=0, prefetch=2)
    with pytest.raises(OSError, match="disk went away"):
        next(it)
