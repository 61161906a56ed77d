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
stripped of punctuation, equals the target word stripped of punctuation (case-sensitive).
It asks the model to finish the word too, so " cat" followed by "s" counts as wrong.

Stop-word-filtered last word (`stopword_filtered_accuracy`), our approximation of the GPT-2
paper's Table 3 protocol (section 3.3: "adding a stop-word filter ... increases accuracy to
63.24%" for the 1.5B model, 52.66% without). OpenAI published neither the list nor how the
filter was applied; ours, exactly:
- candidates: the `top_k` (10) most likely first tokens after the context, best first;
- each is completed greedily to `max_new_tokens` (6) tokens in all and cut to its first word
  as above (the best candidate's word is the plain greedy word);
- a word is admissible when it is non-empty and its lower case is not in the stop-word list,
  by default NLTK's English list (179 words, `stopwords.py`);
- the prediction is the first admissible candidate word ("" if none of the 10 is), scored
  like the last-word variant. A target that is itself a stop word can never be matched
  (`stopword_targets` counts them).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import string
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gpt2jax.errors import DataError
from gpt2jax.eval.stopwords import NLTK_ENGLISH
from gpt2jax.nn import loss as loss_lib
from gpt2jax.nn.model import GPT2, GPT2Config

MIN_BUCKET = 64
STOPWORD_TOP_K = 10  # candidate first tokens the stop-word filter may go through


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
    whole = enc.encode(context + continuation)
    ctx = enc.encode(context)
    return ctx, whole[len(ctx):]


def _bucket(n: int, cap: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length for n tokens: a power of two >= minimum, at most cap."""
    return min(cap, max(minimum, 1 << (n - 1).bit_length()))


@functools.lru_cache(maxsize=16)
def _score_fn(cfg: GPT2Config):
    model = GPT2(cfg)

    def score(params, inputs, positions, targets, weights):
        """inputs [B, L], positions/targets/weights [B, K] (the target word's positions: the
        head runs there only) -> (nll sums [B], all-greedy [B] bool, argmax [B, K])."""
        hidden = model.apply({"params": params}, inputs, return_hidden=True)
        nll, greedy = loss_lib.head_at(hidden, loss_lib.head_embedding(params), positions,
                                       targets, weights, cfg.compute_dtype)
        ok = jnp.all((greedy == targets) | (weights == 0), axis=-1)
        return nll, ok, greedy

    return jax.jit(score)


def _pack(examples, rows, length: int):
    """Right-padded inputs/targets/weights [B, length] of `(ctx, cont)` examples."""
    inputs, targets, weights = loss_lib.empty_batch(len(rows), length)
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
        k = _bucket(int(np.count_nonzero(weights, axis=1).max()), length, 8)
        positions = loss_lib.scored_positions(weights, k)
        targets, weights = loss_lib.gather_scored(positions, targets, weights)
        sums, good, greedy = jax.device_get(fn(params, inputs, positions, targets, weights))
        for i, r in enumerate(chunk):
            nll[r], ok[r] = sums[i], good[i]
            greedy_tokens[r] = greedy[i][weights[i] > 0].tolist()
    return nll, ok, greedy_tokens


def _strip_word(word: str) -> str:
    return word.strip().strip(string.punctuation + "\u201c\u201d\u2018\u2019")


@functools.lru_cache(maxsize=16)
def _next_tokens_fn(cfg: GPT2Config, k: int):
    """Jitted `(params, x [B, L], n [B]) -> [B, k]`: the k most likely tokens after x[:, :n],
    best first (k = 1: the argmax, exactly greedy decoding)."""
    model = GPT2(cfg)

    def next_tokens(params, x, n):
        logits = jnp.take_along_axis(model.apply({"params": params}, x),
                                     (n - 1)[:, None, None], 1)[:, 0]
        if k == 1:
            return jnp.argmax(logits, -1)[:, None]
        return jax.lax.top_k(logits, k)[1]

    return jax.jit(next_tokens)


def next_tokens(cfg: GPT2Config, params, seqs, k: int = 1, context_length: int = 1024,
                batch_size: int = 16) -> np.ndarray:
    """The k most likely next tokens after each sequence: [N, k] int, best first.

    Batches are padded to `batch_size` rows and power-of-two lengths (few compiles); each
    sequence must fit `context_length`.
    """
    fn, out = _next_tokens_fn(cfg, k), np.zeros((len(seqs), k), np.int64)
    for start in range(0, len(seqs), batch_size):
        chunk = [list(s) for s in seqs[start:start + batch_size]]
        n_real = len(chunk)
        chunk += [[0]] * (batch_size - n_real)
        x = np.zeros((batch_size, _bucket(max(map(len, chunk)), context_length)), np.int32)
        for i, s in enumerate(chunk):
            x[i, :len(s)] = s
        lengths = np.array([len(s) for s in chunk])
        out[start:start + n_real] = np.asarray(fn(params, x, lengths))[:n_real]
    return out


def greedy_continue(cfg: GPT2Config, params, seqs, steps: int, context_length: int = 1024,
                    batch_size: int = 16) -> list[list[int]]:
    """Each sequence extended by `steps` greedy tokens (a full forward per step, no cache)."""
    seqs = [list(s) for s in seqs]
    for _ in range(steps):
        for s, t in zip(seqs, next_tokens(cfg, params, seqs, 1, context_length, batch_size)):
            s.append(int(t[0]))
    return seqs


def first_word(enc, tokens) -> str:
    """The first word a continuation spells, stripped of punctuation; "" when it does not
    start with whitespace (the context ends inside no word, so a new word needs a space).
    The text ends at the first id the tokenizer lacks (a padded vocabulary's extra rows)."""
    text = enc.decode(list(itertools.takewhile(lambda t: t < enc.vocab_size, tokens)))
    parts = text.split() if text[:1].isspace() else []
    return _strip_word(parts[0]) if parts else ""


def greedy_words(cfg: GPT2Config, params, enc, contexts, max_new_tokens: int = 6,
                 context_length: int = 1024, batch_size: int = 16) -> list[str]:
    """The first word greedy decoding produces after each context (contexts [N] of token
    lists, cut to their last `context_length - max_new_tokens` tokens)."""
    ctxs = [list(c)[-(context_length - max_new_tokens):] for c in contexts]
    outs = greedy_continue(cfg, params, ctxs, max_new_tokens, context_length, batch_size)
    return [first_word(enc, o[len(c):]) for c, o in zip(ctxs, outs)]


def admissible(word: str, stop_words) -> bool:
    """A prediction the stop-word filter keeps: a non-empty word whose lower case is not in
    `stop_words`."""
    return bool(word) and word.lower() not in stop_words


def stopword_filtered_words(cfg: GPT2Config, params, enc, contexts, stop_words=NLTK_ENGLISH,
                            top_k: int = STOPWORD_TOP_K, max_new_tokens: int = 6,
                            context_length: int = 1024, batch_size: int = 16,
                            greedy: list[str] | None = None) -> list[str]:
    """The last-word prediction under the stop-word filter (module docstring), per context.

    Candidates are the `top_k` most likely first tokens after the context, best first (the
    best one's word is the plain greedy word, `greedy` if given); each is completed greedily
    (`max_new_tokens` tokens in all) to its first word; the prediction is the first
    admissible word in that order, "" if none of the `top_k` is admissible.
    """
    ctxs = [list(c)[-(context_length - max_new_tokens):] for c in contexts]
    if greedy is None:
        greedy = greedy_words(cfg, params, enc, ctxs, max_new_tokens, context_length, batch_size)
    chosen = [w if admissible(w, stop_words) else None for w in greedy]
    todo = [i for i, w in enumerate(chosen) if w is None]
    ranked = next_tokens(cfg, params, [ctxs[i] for i in todo], top_k, context_length,
                         batch_size) if todo else np.zeros((0, top_k), np.int64)
    rank_of = {i: r for r, i in enumerate(todo)}
    for rank in range(1, top_k):
        todo = [i for i in todo if chosen[i] is None]
        if not todo:
            break
        cands = [ctxs[i] + [int(ranked[rank_of[i], rank])] for i in todo]
        outs = greedy_continue(cfg, params, cands, max_new_tokens - 1, context_length,
                               batch_size)
        for i, o in zip(todo, outs):
            word = first_word(enc, o[len(ctxs[i]):])
            chosen[i] = word if admissible(word, stop_words) else None
    return [w or "" for w in chosen]


def evaluate_lambada(cfg: GPT2Config, params, enc, texts: list[str], context_length: int = 1024,
                     batch_size: int = 16, last_word: bool = False,
                     progress: bool = False, min_bucket: int = MIN_BUCKET,
                     stop_words=NLTK_ENGLISH, stopword_top_k: int = STOPWORD_TOP_K) -> dict:
    """lm-eval `lambada_openai` accuracy and perplexity (+ the last-word protocols if asked).

    Returns a dict: examples, accuracy, perplexity, target_tokens (total), and per-example
    lists `greedy_ok`, `target_nll`, `greedy_tokens`; with `last_word`, what
    `last_word_scores` returns (last_word_accuracy, stopword_filtered_accuracy, ...).
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
        out.update(last_word_scores(cfg, params, enc, texts, [c for c, _ in examples],
                                    context_length, batch_size, stop_words, stopword_top_k))
    return out


def last_word_scores(cfg: GPT2Config, params, enc, texts, contexts, context_length: int,
                     batch_size: int, stop_words, top_k: int) -> dict:
    """The last-word protocols without and with the stop-word filter (module docstring).

    Returns last_word_accuracy, stopword_filtered_accuracy, the per-example predictions
    `last_word_predictions` / `stopword_filtered_predictions`, and `stopword_targets`
    (examples whose target itself is a stop word: the filter can never get them right).
    """
    targets = [_strip_word(t.rsplit(" ", 1)[1]) for t in texts]
    words = greedy_words(cfg, params, enc, contexts, context_length=context_length,
                         batch_size=batch_size)
    filtered = stopword_filtered_words(cfg, params, enc, contexts, stop_words, top_k,
                                       context_length=context_length, batch_size=batch_size,
                                       greedy=words)
    accuracy = lambda preds: float(np.mean([w == t for w, t in zip(preds, targets)]))
    return {
        "last_word_accuracy": accuracy(words),
        "stopword_filtered_accuracy": accuracy(filtered),
        "last_word_predictions": words,
        "stopword_filtered_predictions": filtered,
        "stopword_targets": sum(not admissible(t, stop_words) for t in targets),
    }
