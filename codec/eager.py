"""Keep table builders out of ``torch.compile`` graphs without importing the compiler.

``torch.compiler.disable`` imports ``torch._dynamo`` (seconds) when the decorated module is
imported, although coding never compiles. :func:`eager` defers that: outside a trace the
function is called as it is; while Dynamo traces (training, which compiles) the call goes
through ``torch.compiler.disable``, so the body runs eagerly and is never traced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def eager(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, run eagerly even when called from code that ``torch.compile`` traces."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if torch.compiler.is_compiling():  # Dynamo is tracing, so it is already imported
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return call
