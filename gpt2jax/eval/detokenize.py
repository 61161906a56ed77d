"""Invertible detokenizers for word-level releases (WikiText, PTB), in the spirit of the GPT-2
paper ("invertible de-tokenizers to remove as many of these tokenization / pre-processing
artifacts as possible").

A detokenizer is an ordered list of `Rule`s applied to each line. Each rule has a forward
rewrite, an inverse rewrite, and an ambiguity test: the rule is invertible on a text when the
pattern its inverse looks for does not occur in that text *before* the rule runs (so every
occurrence after it was made by the rule). `retokenize` undoes the rules in reverse order.

What we claim: `retokenize(detokenize(line)) == line` for every line where no rule was
ambiguous (`claims_invertible`): 4,152 of 4,358 lines of WikiText-2 `wiki.test.tokens`,
4,102 of the raw file, all 3,761 PTB test lines. What we do not claim (those lines are
still detokenized, just not invertibly):
- WikiText lines with a token that already looks like a rule's output: an abbreviation
  ending in "." ("U.S.", "No.") or another mark before a space, next to the
  sentence-punctuation rule (about 200 lines); an odd number of quotes or an empty quote
  pair (5 lines); a digit separator inside a token (1 line);
- PTB's lower-casing, `N` for numbers and `<unk>`, which no detokenizer can undo, are left
  as they are (so is WikiText's `<unk>`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from gpt2jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rewrite: `forward(text)`, its `inverse`, and `ambiguous(text)` (True when the forward
    rewrite of this text could not be undone)."""

    name: str
    forward: Callable[[str], str]
    inverse: Callable[[str], str]
    ambiguous: Callable[[str], bool]


def regex_rule(name: str, pattern: str, repl: str, inv_pattern: str, inv_repl: str) -> Rule:
    """A rule from two regex substitutions; ambiguous when `inv_pattern` already matches."""
    fwd, inv = re.compile(pattern), re.compile(inv_pattern)
    return Rule(name, lambda s: fwd.sub(repl, s), lambda s: inv.sub(inv_repl, s),
                lambda s: inv.search(s) is not None)


def _strip_line(line: str) -> str:
    return "" if line == " " else line[1:-1]


def _pad_line(text: str) -> str:
    return " " if text == "" else f" {text} "


def _bad_line_format(line: str) -> bool:
    """Lines of both releases are " tok tok ... tok " (a blank one is a single space)."""
    if line == " ":
        return False
    return len(line) < 3 or line[0] != " " or line[-1] != " " or line[1] == " " or line[-2] == " "


LINE_FORMAT = Rule("line_format", _strip_line, _pad_line, _bad_line_format)


def _quote_forward(s: str) -> str:
    out, open_quote = [], True
    parts = s.split('"')
    for i in range(len(parts) - 1):
        out.append(parts[i].rstrip(" ") if not open_quote else parts[i])
        out.append('"')
        if open_quote:
            parts[i + 1] = parts[i + 1].lstrip(" ")
        open_quote = not open_quote
    out.append(parts[-1])
    return "".join(out)


def _quote_inverse(s: str) -> str:
    out, open_quote = [], True
    parts = s.split('"')
    for i in range(len(parts) - 1):
        part = parts[i]
        if not open_quote and part:
            part = part + " "
        out.append(part)
        out.append('"')
        if open_quote and parts[i + 1]:
            parts[i + 1] = " " + parts[i + 1]
        open_quote = not open_quote
    out.append(parts[-1])
    return "".join(out)


def _quote_ambiguous(s: str) -> bool:
    """Invertible when every quote is its own token, they pair up, and no pair is empty."""
    if s.count('"') % 2 or re.search(r'\S"|"\S', s) or re.search(r'"\s*"', s):
        return True
    return False


QUOTES = Rule("paired_quotes", _quote_forward, _quote_inverse, _quote_ambiguous)

_CLITICS = r"(?:s|t|re|ve|m|ll|d)"

WIKITEXT_RULES = (
    LINE_FORMAT,
    # "@-@" itself must not look like a joined hyphen, hence the [^\s@] neighbours.
    regex_rule("hyphen", r"(?<=[^\s@]) @-@ (?=[^\s@])", "-", r"(?<=[^\s@])-(?=[^\s@])",
               " @-@ "),
    regex_rule("number_comma", r"(?<=\d) @,@ (?=\d)", ",", r"(?<=\d),(?=\d)", " @,@ "),
    regex_rule("decimal_point", r"(?<=\d) @\.@ (?=\d)", ".", r"(?<=\d)\.(?=\d)", " @.@ "),
    regex_rule("headings", r"=( =)+", lambda m: m.group(0).replace(" ", ""), r"==+",
               lambda m: " ".join(m.group(0))),
    regex_rule("clitics", rf" '({_CLITICS})(?= |$)", r"'\1", rf"(?<=\S)'({_CLITICS})(?= |$)",
               r" '\1"),
    QUOTES,
    regex_rule("open_bracket", r"([(\[]) (?=\S)", r"\1", r"[(\[](?=\S)", r"\g<0> "),
    regex_rule("close_bracket", r"(?<=\S) ([)\]])", r"\1", r"(?<=\S)([)\]])", r" \1"),
    # A mark right after another mark keeps its space (". ," stays ". ,"), else ambiguous.
    regex_rule("punctuation", r"(?<=[^\s,.;:!?]) ([,.;:!?])(?= |$)", r"\1",
               r"(?<=[^\s,.;:!?])([,.;:!?])(?= |$)", r" \1"),
)

PTB_RULES = (
    LINE_FORMAT,
    regex_rule("nt", r" n't(?= |$)", "n't", r"(?<=\S)n't(?= |$)", " n't"),
    # PTB splits "n't" (above), so "'t" is not among its clitics.
    regex_rule("clitics", r" '(s|re|ve|m|ll|d)(?= |$)", r"'\1", r"(?<=\S)'(s|re|ve|m|ll|d)(?= |$)",
               r" '\1"),
    regex_rule("dollar", r"\$ (?=\S)", "$", r"\$(?=\S)", "$ "),
)

DETOKENIZERS = {"wikitext": WIKITEXT_RULES, "ptb": PTB_RULES}


def _rules(name: str) -> tuple[Rule, ...]:
    if name not in DETOKENIZERS:
        raise ConfigError(f"Unknown detokenizer {name!r}; choose one of {sorted(DETOKENIZERS)}.")
    return DETOKENIZERS[name]


def detokenize_line(line: str, rules: tuple[Rule, ...]) -> tuple[str, bool]:
    """Applies `rules` to one line; returns (text, invertible)."""
    invertible = True
    for rule in rules:
        invertible = invertible and not rule.ambiguous(line)
        line = rule.forward(line)
    return line, invertible


def retokenize_line(text: str, rules: tuple[Rule, ...]) -> str:
    """Undoes `rules` on one detokenized line (exact where `detokenize_line` said invertible)."""
    for rule in reversed(rules):
        text = rule.inverse(text)
    return text


def _lines(text: str) -> tuple[list[str], bool]:
    ends_newline = text.endswith("\n")
    return (text[:-1] if ends_newline else text).split("\n"), ends_newline


def detokenize(text: str, name: str) -> str:
    """Detokenizes a whole file's text line by line (`name`: "wikitext" or "ptb")."""
    rules = _rules(name)
    lines, ends_newline = _lines(text)
    out = "\n".join(detokenize_line(line, rules)[0] for line in lines)
    return out + "\n" if ends_newline else out


def retokenize(text: str, name: str) -> str:
    """The inverse of `detokenize`, line by line."""
    rules = _rules(name)
    lines, ends_newline = _lines(text)
    out = "\n".join(retokenize_line(line, rules) for line in lines)
    return out + "\n" if ends_newline else out


def claims_invertible(text: str, name: str) -> list[bool]:
    """Per line of `text`: whether `detokenize` claims to be invertible on it."""
    rules = _rules(name)
    return [detokenize_line(line, rules)[1] for line in _lines(text)[0]]
