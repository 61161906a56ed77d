"""Token shards of Tiny Shakespeare decode back to exactly the directly tokenized text."""

from __future__ import annotations

import numpy as np
import pytest

from configs import common
from gpt2jax import data
from gpt2jax.cli import CliArgs, run_mode
from gpt2jax.data import shards
from gpt2jax.data.sources import parallel_chunks
from gpt2jax.errors import DataError

SHAKESPEARE = "$GPT2JAX_DATA_DIR/tinyshakespeare/input.txt"


@pytest.fixture(scope="module")
def text(data_dir) -> str:
    return (data_dir / "tinyshakespeare" / "input.txt").read_text()


def test_parallel_chunks_tokenize_like_the_whole_text(text, tokenizer):
    whole = tokenizer.encode_ordinary(text)
    assert len(whole) == 338_025  # nanoGPT: 301,966 train + 36,059 val
    pieces = parallel_chunks(text, target_chars=2048)
    assert len(pieces) > 400 and "".join(pieces) == text
    chunked = [t for ids in tokenizer.encode_ordinary_batch(pieces) for t in ids]
    assert chunked == whole


def test_gpt2_shards_equal_direct_tokenization(tmp_path, text, tokenizer):
    cfg = common.data_config(train_file=SHAKESPEARE, tokenizer="gpt2", val_fraction=0.1,
                             shards_dir=str(tmp_path), tokens_per_shard=100_000)
    meta = data.prepare_shards(cfg, progress=False)
    cut = int(len(text) * 0.9)
    tok, train, val, meta2 = shards.open_shards(str(tmp_path))
    assert meta2 == {k: v for k, v in meta.items() if k != "seconds"}  # seconds: not written
    assert meta["dtype"] == "uint16" and meta["num_tokens"] == 338_025
    assert len(meta["splits"]["train"]["files"]) == 4  # 301,966 tokens in 100k-token files
    assert train.arrays[0].dtype == np.uint16
    np.testing.assert_array_equal(train.to_numpy(), tokenizer.encode_ordinary(text[:cut]))
    np.testing.assert_array_equal(val.to_numpy(), tokenizer.encode_ordinary(text[cut:]))
    assert (len(train), len(val)) == (301_966, 36_059)
    assert tok.decode(train.to_numpy()) + tok.decode(val.to_numpy()) == text
    # windows across shard boundaries read the same as the flat array
    flat = np.asarray(tokenizer.encode_ordinary(text[:cut]))
    idx = np.array([[99_998, 99_999, 100_000, 100_001], [0, 1, 299_999, 300_000]])
    np.testing.assert_array_equal(train.gather(idx), flat[idx])


def test_prepare_cli_char_and_train_from_shards(tmp_path, text):
    from configs import prepare_shakespeare

    config = prepare_shakespeare.get_config("char")
    config.data.shards_dir = str(tmp_path)
    meta = run_mode("prepare", config, CliArgs()) or shards.read_meta(str(tmp_path))
    assert meta["tokenizer"]["vocab_size"] == 65 and meta["num_tokens"] == 1_115_394
    cfg = common.data_config(source="shards", shards_dir=str(tmp_path), mode="epochs",
                             shuffle=False)
    ds = data.build_datasets(cfg, 256, 4, seed=0, process_index=0, process_count=1)
    assert isinstance(ds.tokenizer, data.CharTokenizer) and ds.tokenizer.vocab_size == 65
    everything = np.concatenate([ds.train_stream.to_numpy(), ds.val_stream.to_numpy()])
    assert ds.tokenizer.decode(everything) == text
    assert data.load_tokenizer(tmp_path).chars == sorted(set(text))
    first = next(ds.train)
    assert ds.tokenizer.decode(first["inputs"][0]) == text[:256]


def test_verify_shards_false_keeps_the_cheap_checks(tmp_path):
    """verify_shards=False skips the sha256 pass (a same-size swap reads) but still refuses
    a shard of the wrong size."""
    (tmp_path / "t.txt").write_text("To be, or not to be: that is the question.\n" * 60)
    folder = tmp_path / "s"
    data.prepare_shards(common.data_config(train_file=str(tmp_path / "t.txt"), tokenizer="char",
                                           shards_dir=str(folder), tokens_per_shard=500),
                        progress=False)
    a, b = folder / "train_00000.bin", folder / "train_00001.bin"
    first, second = a.read_bytes(), b.read_bytes()
    assert first != second and len(first) == len(second)
    a.write_bytes(second)
    b.write_bytes(first)
    with pytest.raises(DataError, match="train_00000.bin.*sha256"):
        shards.open_shards(str(folder))
    _, train, _, _ = shards.open_shards(str(folder), verify=False)
    assert len(train) == 2_322  # 90% of 2,580 characters, in 500-token files
    np.testing.assert_array_equal(train.gather(np.arange(500)), np.frombuffer(second, np.uint16))
    b.write_bytes(first[:-2])
    with pytest.raises(DataError, match="train_00001.bin.*bytes"):
        shards.open_shards(str(folder), verify=False)
