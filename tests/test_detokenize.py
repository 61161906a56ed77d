"""The detokenizers round-trip exactly on every line where they claim to, on the real PTB and
WikiText-2 test files; where they do not claim it is stated (and tested) below."""

from __future__ import annotations

import pytest

from gpt2jax.errors import ConfigError
from gpt2jax.eval import detokenize as d

# (detokenizer, file, lines, lines claimed invertible) measured on the shared files.
FILES = [
    ("wikitext", "wikitext-2/wiki.test.tokens", 4358, 4152),
    ("wikitext", "wikitext-2-raw/wiki.test.raw", 4358, 4102),
    ("ptb", "ptb/ptb.test.txt", 3761, 3761),
]


def _read(path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


@pytest.mark.parametrize("name,relative,n_lines,n_claimed", FILES)
def test_round_trip_where_claimed(data_dir, name, relative, n_lines, n_claimed):
    text = _read(data_dir / relative)
    claims = d.claims_invertible(text, name)
    detok_lines = d.detokenize(text, name)[:-1].split("\n")
    lines = text[:-1].split("\n")
    assert len(claims) == len(lines) == len(detok_lines) == n_lines
    assert sum(claims) == n_claimed
    failures = [i for i, (line, out, ok) in enumerate(zip(lines, detok_lines, claims))
                if ok and d.retokenize_line(out, d.DETOKENIZERS[name]) != line]
    assert failures == []
    # The detokenizer changed the text (it is not the identity on claimed lines).
    changed = sum(out != line for line, out, ok in zip(lines, detok_lines, claims) if ok)
    assert changed > 0.5 * sum(1 for line, ok in zip(lines, claims) if ok and line != " ")


def test_whole_ptb_file_round_trips(data_dir):
    text = _read(data_dir / "ptb" / "ptb.test.txt")
    assert d.retokenize(d.detokenize(text, "ptb"), "ptb") == text


def test_wikitext_rules_on_examples():
    line = (' = = Career = = \n'
            ' He had a guest @-@ starring role as " Craig " in Teddy \'s Story ( 2004 ) ; '
            'it cost 1 @,@ 000 @.@ 5 dollars . \n')
    out = d.detokenize(line, "wikitext")
    assert out == ('== Career ==\n'
                   'He had a guest-starring role as "Craig" in Teddy\'s Story (2004); '
                   'it cost 1,000.5 dollars.\n')
    assert d.retokenize(out, "wikitext") == line
    assert d.claims_invertible(line, "wikitext") == [True, True]


def test_stated_non_invertible_cases():
    # An abbreviation token ending in "." next to the sentence-final-period rule: "U.S." and
    # "U.S ." would both become "U.S.", so the line is not claimed (still detokenized).
    line = " the U.S. Army won . "
    assert d.claims_invertible(line, "wikitext") == [False]
    assert d.detokenize(line, "wikitext") == "the U.S. Army won."
    # Unpaired quotes cannot be told open from close.
    assert d.claims_invertible(' he said " yes . ', "wikitext") == [False]
    # PTB's lower-casing, N and <unk> are kept as they are.
    assert d.detokenize(" the <unk> rose N % and it 's fine \n", "ptb") == (
        "the <unk> rose N % and it's fine\n")


def test_unknown_detokenizer():
    with pytest.raises(ConfigError, match="ptb"):
        d.detokenize("x", "nope")
