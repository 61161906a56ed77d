"""Parallelism: the device mesh and logical-axis rules (`sharding`), the one service that
places params, state and batches on the mesh (`placement`), and multi-host start-up through
`jax.distributed` (`distributed`).
"""
