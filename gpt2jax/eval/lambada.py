"""LAMBADA (OpenAI's `lambada_test.jsonl`): lm-eval's `lambada_openai` protocol, plus the
stricter last-word variant.

lm-eval `lambada_openai` (what we reproduce exactly):
- context = the text up to its last space, target = `" " + last word`;
- tokens: `whole = enc(context + target)`, `ctx = enc(context)`, target tokens =
  `whole[len(ctx):]`; the model reads `(ctx + target)[-(L + 1):][:-1]` (L = 1024);
- accuracy = mean over examples of "the greedy (argmax) token equals the target token at
  every target position" (teacher-forced);
- perplexity = `exp(-mean over examples of the target's summed log-likelihood)`, i.e.
  `exp(mean target NLL)` per example, not per token.

Last-word variant (`last_word_accuracy`): greedy decoding from the context alone (no
teacher forcing); correct when the first generated word, cut at the next whitespace and
stripped of punctuation, equals the target word stripped of punctuation. It asks the model
to finish the word too, so " cat" followed by "s" counts as wrong.
"""

from __future__ import annotations

import functools
import json
import math
import string
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gpt2jax.errors import DataError
from gpt2jax.eval.perplexity import token_nll
from gpt2jax.model import GPT2, GPT2Config

MIN_BUCKET = 64


def read_lambada(path: str | Path) -> list[str]:
    """The `text` field of every line of a LAMBADA jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"LAMBADA file {str(path)!r} not found; point data_dir at the folder "
                        "holding lambada/lambada_test.jsonl (OpenAI's version).")
    texts = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError) as e:
                    raise DataError(f"{path}:{i + 1} is not a JSON object with 'text': {e}.") from e
    return texts


def encode_example(enc, text: str) -> tuple[list[int], list[int]]:
    """(context tokens, target tokens) of one text, exactly as lm-eval's `_encode_pair`."""
    if " " not in text:
        raise DataError(f"LAMBADA text has no space to split the last word off: {text[:60]!r}.")
    context, word = text.rsplit(" ", 1)
    continuation = " " + word
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc.encode_ordinary(context + continuation)
    ctx = enc.encode_ordinary(context)
    return ctx, whole[len(ctx):]


def _bucket(n: int, cap: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length for n tokens: a power of two >= minimum, at most cap."""
    return min(cap, max(minimum, 1 << (n - 1).bit_length()))


@functools.lru_cache(maxsize=16)
def _score_fn(cfg: GPT2Config):
    model = GPT2(cfg)

    def score(params, inputs, targets, weights):
        """inputs/targets/weights [B, L] -> (nll sums [B], all-greedy [B] bool, argmax [B, L])."""
        logits = model.apply({"params": params}, inputs)
        nll = jnp.sum(token_nll(logits, targets) * weights, axis=-1)
        greedy = jnp.argmax(logits, axis=-1)
        ok = jnp.all((greedy == targets) | (weights == 0), axis=-1)
        return nll, ok, greedy

    return jax.jit(score)


def _pack(examples, rows, length: int):
    """Right-padded inputs/targets/weights [B, length] of `(ctx, cont)` examples."""
    inputs = np.zeros((len(rows), length), np.int32)
    targets = np.zeros((len(rows), length), np.int32)
    weights = np.zeros((len(rows), length), np.float32)
    for i, r in enumerate(rows):
        if r < 0:
            continue
        ctx, cont = examples[r]
        seq = (ctx + cont)[-(length + 1):]
        inp, n = seq[:-1], len(seq) - 1
        inputs[i, :n] = inp
        targets[i, :n] = seq[1:]
        weights[i, n - len(cont):n] = 1.0
    return inputs, targets, weights


def score_examples(cfg: GPT2Config, params, examples, context_length: int = 1024,
                   batch_size: int = 16, progress: bool = False, min_bucket: int = MIN_BUCKET):
    """Teacher-forced scores of `(context tokens, target tokens)` pairs.

    Returns (target NLL [N] float64, all-greedy [N] bool, greedy target tokens: list of [n_i]).
    Examples are sorted by length and padded to power-of-two buckets >= `min_bucket` (few
    compiles).
    """
    order = np.argsort([len(c) + len(t) for c, t in examples], kind="stable")
    nll = np.zeros(len(examples), np.float64)
    ok = np.zeros(len(examples), bool)
    greedy_tokens = [None] * len(examples)
    fn = _score_fn(cfg)
    for start in tqdm(range(0, len(order), batch_size), desc="lambada", disable=not progress):
        rows = np.full(batch_size, -1)
        chunk = order[start:start + batch_size]
        rows[:len(chunk)] = chunk
        longest = max(len(examples[r][0]) + len(examples[r][1]) - 1 for r in chunk)
        length = _bucket(longest, context_length, min_bucket)
        inputs, targets, weights = _pack(examples, rows, length)
        sums, good, greedy = jax.device_get(fn(params, inputs, targets, weights))
        for i, r in enumerate(chunk):
            nll[r], ok[r] = sums[i], good[i]
            greedy_tokens[r] = greedy[i][weights[i] > 0].tolist()
    return nll, ok, greedy_tokens


def _strip_word(word: str) -> str:
    return word.strip().strip(string.punctuation + "\u201c\u201d\u2018\u2019")


def greedy_words(cfg: GPT2Config, params, enc, contexts, max_new_tokens: int = 6,
                 context_length: int = 1024, batch_size: int = 16) -> list[str]:
    """The first word greedy decoding produces after each context (full forward per step)."""
    model, words = GPT2(cfg), []
    step = jax.jit(lambda p, x, n: jnp.argmax(
        jnp.take_along_axis(model.apply({"params": p}, x), (n - 1)[:, None, None], 1)[:, 0], -1))
    for start in range(0, len(contexts), batch_size):
        chunk = [list(c)[-(context_length - max_new_tokens):]
                 for c in contexts[start:start + batch_size]]
        chunk += [[0]] * (batch_size - len(chunk))
        length = _bucket(max(map(len, chunk)) + max_new_tokens, context_length)
        seqs = [list(c) for c in chunk]
        for _ in range(max_new_tokens):
            x = np.zeros((batch_size, length), np.int32)
            for i, s in enumerate(seqs):
                x[i, :len(s)] = s
            nxt = np.asarray(step(params, x, np.array([len(s) for s in seqs])))
            for i, s in enumerate(seqs):
                s.append(int(nxt[i]))
        n_real = min(batch_size, len(contexts) - start)
        for c, s in zip(chunk[:n_real], seqs[:n_real]):
            text = enc.decode(s[len(c):])
            # The context ends inside no word: a prediction must start with a space.
            parts = text.split() if text[:1].isspace() else []
            words.append(_strip_word(parts[0]) if parts else "")
    return words


def evaluate_lambada(cfg: GPT2Config, params, enc, texts: list[str], context_length: int = 1024,
                     batch_size: int = 16, last_word: bool = False,
                     progress: bool = False, min_bucket: int = MIN_BUCKET) -> dict:
    """lm-eval `lambada_openai` accuracy and perplexity (+ the last-word variant if asked).

    Returns a dict: examples, accuracy, perplexity, target_tokens (total), and per-example
    lists `greedy_ok`, `target_nll`, `greedy_tokens`; with `last_word`, `last_word_accuracy`.
    """
    if not texts:
        raise DataError("No LAMBADA examples to evaluate.")
    examples = [encode_example(enc, t) for t in texts]
    nll, ok, greedy = score_examples(cfg, params, examples, context_length, batch_size,
                                     progress, min_bucket)
    out = {
        "examples": len(texts),
        "accuracy": float(np.mean(ok)),
        "perplexity": math.exp(float(np.mean(nll))),
        "target_tokens": int(sum(len(t) for _, t in examples)),
        "greedy_ok": ok.tolist(),
        "target_nll": nll.tolist(),
        "greedy_tokens": greedy,
    }
    if last_word:
        targets = [_strip_word(t.rsplit(" ", 1)[1]) for t in texts]
        words = greedy_words(cfg, params, enc, [c for c, _ in examples],
                             context_length=context_length, batch_size=batch_size)
        out["last_word_accuracy"] = float(np.mean([w == t for w, t in zip(words, targets)]))
    return out
