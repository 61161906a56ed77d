"""The arguments of `gpt2jax.generate`: HF `generate`'s names, defaults and checks."""

from __future__ import annotations

import dataclasses

from gpt2jax.errors import ConfigError


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
    def pad_id(self) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_ids[0] if self.eos_ids else 0


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
    if args.early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping={args.early_stopping!r}; use True, False or 'never'.")
