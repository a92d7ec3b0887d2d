"""How the networks' CPU threads behave: they sleep while they wait, and `--threads` counts them.

torch runs one OpenMP thread per core. GNU OpenMP lets a waiting thread spin for a while
before it sleeps; on a machine whose cores other processes also use, the spinning threads
take the cores the working one needs, and two threads become several times slower than one.
Sleeping waiters (OMP_WAIT_POLICY=PASSIVE) keep two threads at least as fast as one there.
OpenMP reads the policy once, when torch loads it, so :func:`before_torch` must run first; a
policy set in the environment is kept.
"""

from __future__ import annotations

import os


def before_torch() -> None:
    """Ask OpenMP for sleeping waiters, unless the environment chose; before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int | None) -> None:
    """``threads`` intra-op threads for torch; None keeps its default (one per core, or
    OMP_NUM_THREADS)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
