"""The network: `GPT2Config`, the linen modules with GPT-2 parameter names, attention variants
(MHA/GQA/MQA, sliding window, fused/cudnn/xla kernels) and position encodings.

Modules: `model` (config, blocks, KV cache, init), `attention` (variants and kernels),
`positions` (learned, RoPE, ALiBi). Depends on nothing else in gpt2jax but `errors` and
`parallel.sharding` (logical axis names).
"""
