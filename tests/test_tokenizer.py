"""The tiktoken GPT-2 tokenizer on real data, against Hugging Face's GPT2TokenizerFast."""

from __future__ import annotations

import transformers

from gpt2jax.data import bpe as tok
from gpt2jax.data.bpe import EOT_ID, TokenizerError, encode_batch, get_tokenizer

import pytest


def test_known_ids(tokenizer):
    assert tokenizer.n_vocab == 50257
    assert tokenizer.encode_ordinary("Hello world") == [15496, 995]
    assert tokenizer.encode("<|endoftext|>", allowed_special="all") == [EOT_ID] == [50256]
    assert tokenizer.decode([383, 2068, 7586, 21831]) == " The quick brown fox"


def test_tiny_shakespeare_count_and_byte_identical_round_trip(tokenizer, data_dir):
    raw = (data_dir / "tinyshakespeare" / "input.txt").read_bytes()
    ids = tokenizer.encode_ordinary(raw.decode("utf-8"))
    assert len(ids) == 338_025
    assert tokenizer.decode_bytes(ids) == raw


def test_ids_identical_to_hf_fast_tokenizer_on_wikitext2(tokenizer, data_dir):
    hf = transformers.GPT2TokenizerFast(
        vocab=str(data_dir / "gpt2" / "encoder.json"),
        merges=str(data_dir / "gpt2" / "vocab.bpe"),
    )
    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    ours = tokenizer.encode_ordinary(text)
    assert len(ours) == 286_221  # MANIFEST.md: GPT-2 tokens of the file as-is
    assert hf(text)["input_ids"] == ours
    lines = text.splitlines(keepends=True)[:400]
    assert encode_batch(tokenizer, lines) == hf(lines)["input_ids"]


def test_ranks_file_with_wrong_hash_is_rejected(data_dir, tmp_path):
    good = (data_dir / "gpt2" / "gpt2.tiktoken").read_bytes()
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(good.replace(b" 50255\n", b" 50254\n"))
    with pytest.raises(TokenizerError, match="sha256.*original gpt2.tiktoken"):
        get_tokenizer(bad)
    with pytest.raises(TokenizerError, match="does not exist"):
        get_tokenizer(tmp_path / "missing.tiktoken")


def test_ranks_from_environment_variable(data_dir, monkeypatch):
    monkeypatch.setenv(tok.RANKS_ENV, str(data_dir / "gpt2" / "gpt2.tiktoken"))
    assert get_tokenizer().encode_ordinary("Hello world") == [15496, 995]
