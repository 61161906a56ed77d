"""Generation as HF `generate`: arguments and input checks (`args`), logits processors and
warpers (`sampling`), the shared decode plan and buckets (`plan`), the compiled greedy/sampling
loop and the public `generate` (`generate`), and beam search (`beam_search`).
"""
