"""The arguments and inputs of `gpt2jax.generate`: HF `generate`'s names, defaults and checks.

Also the host-side preparation of the prompt batch: HF's attention-mask inference, the new
token budget, and the left-padding columns that can be dropped without changing HF's result.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpt2jax.errors import ConfigError
from gpt2jax.nn.model import GPT2Config
from gpt2jax.nn.positions import check_length


@dataclasses.dataclass(frozen=True)
class GenerationArgs:
    """HF `generate` keyword arguments (names, meanings and defaults as in transformers v5)."""

    max_length: int | None = None          # total length incl. the prompt (HF default 20)
    max_new_tokens: int | None = None      # new tokens; overrides max_length
    min_new_tokens: int = 0                # EOS suppressed until this many new tokens
    do_sample: bool = False                # sample (with warpers) instead of greedy / beams
    temperature: float = 1.0               # sampling only
    top_k: int = 50                        # sampling only; 0 = off
    top_p: float = 1.0                     # sampling only; 1.0 = off
    num_beams: int = 1
    length_penalty: float = 1.0            # beam score = sum logprob / length ** length_penalty
    early_stopping: bool | str = False     # True | False | "never"
    num_return_sequences: int = 1
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    eos_token_id: int | list | tuple | None = 50256
    suppress_tokens: list | tuple | None = None  # ids that are never generated (-inf scores)
    pad_token_id: int | None = None        # None -> the first EOS id, as HF does
    seed: int = 0

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, (list, tuple)):
            return tuple(int(e) for e in self.eos_token_id)
        return (int(self.eos_token_id),)

    @property
    def suppressed_ids(self) -> tuple[int, ...]:
        return tuple(sorted({int(t) for t in self.suppress_tokens or ()}))

    @property
    def pad_id(self) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_ids[0] if self.eos_ids else 0


def suppress_past_tokenizer(kwargs: dict, model_vocab: int, tokenizer_vocab: int) -> dict:
    """`kwargs` (generate arguments) with the model's ids that the tokenizer cannot decode (a
    vocabulary padded past the tokenizer's, e.g. 50,304 rows for speed) added to
    `suppress_tokens`; the same dict when the vocabularies match."""
    past = set(range(tokenizer_vocab, model_vocab))
    if not past:
        return kwargs
    return {**kwargs, "suppress_tokens": sorted(set(kwargs.get("suppress_tokens") or ()) | past)}


def make_args(**kwargs) -> GenerationArgs:
    """Builds `GenerationArgs` from HF-style keyword arguments, rejecting unknown names."""
    known = {f.name for f in dataclasses.fields(GenerationArgs)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"Unknown generate arguments {unknown}; supported: {sorted(known)}.")
    args = GenerationArgs(**kwargs)
    _validate(args)
    return args


def _validate(args: GenerationArgs) -> None:
    """HF's argument checks, as ConfigErrors that name the fix."""
    if not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"top_p={args.top_p} must be in (0, 1]; use 1.0 to disable it.")
    if args.num_beams < 1:
        raise ConfigError(f"num_beams={args.num_beams}; use 1 (no beam search) or more.")
    if args.num_return_sequences < 1:
        raise ConfigError(f"num_return_sequences={args.num_return_sequences} must be >= 1.")
    if not args.do_sample and args.num_return_sequences > args.num_beams:
        raise ConfigError(
            f"num_return_sequences={args.num_return_sequences} > num_beams={args.num_beams} "
            "without sampling; raise num_beams or set do_sample=True."
        )
    if args.do_sample and args.temperature <= 0:
        raise ConfigError(f"temperature={args.temperature} must be > 0 when sampling.")
    if args.top_k < 0 or args.no_repeat_ngram_size < 0 or args.min_new_tokens < 0:
        raise ConfigError("top_k, no_repeat_ngram_size and min_new_tokens must be >= 0.")
    if args.repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty={args.repetition_penalty} must be > 0.")
    if args.suppress_tokens is not None and (
            isinstance(args.suppress_tokens, (str, int))
            or not all(isinstance(t, (int, np.integer)) and t >= 0
                       for t in args.suppress_tokens)):
        raise ConfigError(f"suppress_tokens={args.suppress_tokens!r} must be a list of token "
                          "ids >= 0.")
    if args.early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping={args.early_stopping!r}; use True, False or 'never'.")


def prepare_inputs(input_ids, attention_mask, args: GenerationArgs):
    """Host arrays ids, mask [B, P]; HF's mask inference when none is given."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ConfigError(
            f"input_ids has shape {ids.shape}; give a non-empty prompt as [batch, length] "
            "token ids (an empty prompt has nothing to condition on)."
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(f"input_ids must be integer token ids, got dtype {ids.dtype}.")
    if attention_mask is None:
        pad = args.pad_token_id
        infer = pad is not None and pad not in args.eos_ids and bool((ids == pad).any())
        mask = (ids != pad) if infer else np.ones_like(ids)
    else:
        mask = np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ConfigError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}; "
                              "pass one mask entry per token.")
    mask = mask.astype(np.int32)
    empty = np.flatnonzero(mask.sum(-1) == 0)
    if empty.size:
        raise ConfigError(f"prompt(s) {empty.tolist()} are empty (attention_mask all 0); give "
                          "every prompt at least one token.")
    return ids.astype(np.int32), mask


def new_token_count(cfg: GPT2Config, ids, mask, args: GenerationArgs) -> int:
    """HF's budget: max_new_tokens, else max_length - prompt columns; checked vs the context."""
    if args.max_new_tokens is not None:
        new = args.max_new_tokens
        if new <= 0:
            raise ConfigError(f"max_new_tokens={new}; it must be a positive number of tokens.")
    else:
        max_length = 20 if args.max_length is None else args.max_length
        new = max_length - ids.shape[1]
        if new <= 0:
            raise ConfigError(
                f"max_length={max_length} leaves no room after the {ids.shape[1]}-token prompt "
                "(max_new_tokens <= 0); raise max_length or set max_new_tokens."
            )
    longest = int(mask.sum(-1).max())
    check_length(cfg, longest + new, f"{longest} prompt tokens + {new} new tokens",
                 "shorten the prompt or lower max_new_tokens/max_length")
    return int(new)


def droppable_columns(ids: np.ndarray, mask: np.ndarray, ngram_size: int) -> int:
    """Leading columns of ids/mask [B, W] that can be cut without changing HF's tokens.

    A column that is padding in every row is invisible to attention (masked), to positions
    (cumsum of the mask) and to the repetition penalty (HF skips the left padding), so a batch
    padded to a fixed width (`padding="max_length"`) decodes from its real columns only. HF's
    no_repeat_ngram does see the padding's n-grams: with it on, each distinct n-gram keeps its
    last occurrence, so the cut batch bans exactly the tokens the full one bans.
    """
    real = mask.any(axis=0)
    lead = int(np.argmax(real)) if real.any() else 0
    if ngram_size <= 0 or lead == 0:
        return lead
    width = ids.shape[1]
    if width < ngram_size:
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(ids, ngram_size, axis=1)
    for row in windows:
        _, first_from_end = np.unique(row[::-1], axis=0, return_index=True)
        lead = min(lead, width - ngram_size - int(first_from_end.max()))
    return lead
