"""GPT-2's parameter initializers, each tagged with its logical axes (sharding rules in
`gpt2jax/parallel/sharding.py`): normal(initializer_range) weights, the residual projections'
smaller std, zero biases and unit LayerNorm scales."""

from __future__ import annotations

from flax import linen as nn


def normal(cfg, axes: tuple, std: float | None = None):
    """N(0, std^2) (default `cfg.initializer_range`) with logical `axes`."""
    std = cfg.initializer_range if std is None else std
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def zeros(axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones(axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def residual_std(cfg) -> float:
    """GPT-2 scales residual projections by 1/sqrt(2 * n_layer) at init."""
    return cfg.initializer_range / (2 * cfg.n_layer) ** 0.5
