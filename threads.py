"""How many CPU threads the networks use: one per core the process may run on.

torch starts one intra-op thread per core it counts and a pool of inter-op threads that
coding never uses; on a machine whose cores are shared, more threads than cores only queue.
OMP_NUM_THREADS, when set, wins over the default, and ``--threads`` over both.
"""

from __future__ import annotations

import os


def default_threads() -> int:
    """OMP_NUM_THREADS if it is a positive integer, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """Give torch ``threads`` intra-op threads (default :func:`default_threads`)."""
    import torch

    torch.set_num_threads(default_threads() if threads is None else threads)
