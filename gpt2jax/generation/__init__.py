"""Generation as HF `generate`: arguments and input checks (`args`), logits processors and
warpers (`sampling`), the shared decode plan and buckets (`plan`), the compiled greedy/sampling
loop and the public `generate` (`generate`), beam search (`beam_search`), and the compiled
functions' explicit state: trace counts and per-call stream sinks (`compiled`).
"""
