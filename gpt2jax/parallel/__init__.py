"""Parallelism: the device mesh, logical-axis rules, placing params and batches on the mesh
(`sharding`), and multi-host start-up through `jax.distributed` (`distributed`).
"""
