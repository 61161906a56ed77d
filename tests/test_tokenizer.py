"""The tiktoken GPT-2 tokenizer on real data, against Hugging Face's GPT2TokenizerFast, and
the one `Tokenizer` protocol that the GPT-2 and character tokenizers both follow."""

from __future__ import annotations

import pytest
import transformers

import gpt2jax
from gpt2jax.data import bpe as tok
from gpt2jax.data.bpe import EOT_ID, encode_batch, get_encoding
from gpt2jax.data.tokenizers import (CharTokenizer, Gpt2Tokenizer, Tokenizer, get_tokenizer,
                                     tokenizer_from_json)


@pytest.fixture(scope="module")
def hf_tokenizer(data_dir):
    return transformers.GPT2TokenizerFast(
        vocab=str(data_dir / "gpt2" / "encoder.json"),
        merges=str(data_dir / "gpt2" / "vocab.bpe"),
    )


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


def test_ids_identical_to_hf_fast_tokenizer_on_wikitext2(tokenizer, data_dir, hf_tokenizer):
    hf = hf_tokenizer
    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    ours = tokenizer.encode_ordinary(text)
    assert len(ours) == 286_221  # MANIFEST.md: GPT-2 tokens of the file as-is
    assert hf(text)["input_ids"] == ours
    lines = text.splitlines(keepends=True)[:400]
    assert encode_batch(tokenizer, lines) == hf(lines)["input_ids"]


def test_ranks_from_environment_variable(data_dir, monkeypatch):
    monkeypatch.setenv(tok.RANKS_ENV, str(data_dir / "gpt2" / "gpt2.tiktoken"))
    assert get_encoding().encode_ordinary("Hello world") == [15496, 995]


# ------------------------------------------------------------------ the one Tokenizer protocol

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nCafé, naïve; 'tis"


@pytest.mark.parametrize("kind", ["gpt2", "char"])
def test_both_tokenizers_follow_the_one_protocol(kind, data_dir):
    ranks = str(data_dir / "gpt2" / "gpt2.tiktoken")
    t = get_tokenizer(ranks) if kind == "gpt2" else CharTokenizer.from_texts([TEXT])
    assert isinstance(t, Tokenizer) and t.name == kind
    ids = t.encode(TEXT)
    assert all(0 <= i < t.vocab_size for i in ids)
    assert t.decode(ids) == TEXT
    assert b"".join(t.token_bytes(i) for i in ids) == TEXT.encode("utf-8")  # streaming
    assert t.encode_batch([TEXT, TEXT[:9]]) == [ids, t.encode(TEXT[:9])]
    again = tokenizer_from_json(t.to_json(), ranks)  # as saved beside a checkpoint
    assert type(again) is type(t) and again.encode(TEXT) == ids
    assert again.vocab_size == t.vocab_size and again.eot_id == t.eot_id
    assert t.eot_id == (50256 if kind == "gpt2" else None)


def test_gpt2_special_tokens_only_on_request_as_hf_parses_them(data_dir, hf_tokenizer):
    t = get_tokenizer(data_dir / "gpt2" / "gpt2.tiktoken")
    text = "Hello<|endoftext|> world"
    assert t.encode(text, special=True) == hf_tokenizer(text)["input_ids"]
    assert EOT_ID in t.encode(text, special=True)
    assert EOT_ID not in t.encode(text)  # training data: the marker is plain text
    assert t.encode(text) == t.encoding.encode_ordinary(text)


def test_public_get_tokenizer_is_the_protocol_gpt2_tokenizer():
    enc = gpt2jax.get_tokenizer()
    assert isinstance(enc, Gpt2Tokenizer) and isinstance(enc, Tokenizer)
    assert enc.encode("Hello world") == [15496, 995] and enc.vocab_size == 50257
