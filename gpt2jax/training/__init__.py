"""Training: the optimizer and pure train step (`step`), the host loop (`loop`), Orbax
checkpoints (`checkpoint`), preemption handling (`preemption`), metrics and the NaN guard
(`meter`), and the one-run-per-workdir lock (`workdir_lock`).
"""
