"""`lsq.codec.eager`: table builders run eagerly under torch.compile, and importing the
codec does not import the compiler."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache

import torch

from lsq.codec.eager import eager


def _recording_table(seen: list[bool]):
    @lru_cache(maxsize=4)
    def table(n: int) -> torch.Tensor:
        seen.append(torch.compiler.is_compiling())
        return torch.arange(n, dtype=torch.float32)

    return table


def _compiled_call(table) -> torch.Tensor:
    torch._dynamo.reset()
    return torch.compile(lambda x: x * table(4) + 1, backend="eager")(torch.ones(4))


def test_eager_function_is_not_traced() -> None:
    """Called from a compiled function, the body runs outside the trace, once (its cache
    works), and the result is the eager one; undecorated, the same body is traced."""
    seen: list[bool] = []
    table = eager(_recording_table(seen))
    assert torch.equal(_compiled_call(table), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert seen == [False]
    traced: list[bool] = []
    _compiled_call(_recording_table(traced))
    assert traced == [True]


def test_eager_outside_compile_is_the_function() -> None:
    seen: list[bool] = []
    table = eager(_recording_table(seen))
    assert torch.equal(table(3), torch.arange(3, dtype=torch.float32))
    assert table(3) is table(3) and seen == [False]
    assert table.__name__ == "table"


def test_codec_modules_do_not_import_the_compiler() -> None:
    code = ("import sys, torch\n"
            "from lsq.codec import lattice_prior, leech, shell_prior\n"
            "leech.nearest(torch.randn(5, 24))\n"
            "leech.shell_index(leech.shell_point(torch.arange(4)))\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert out.stdout.decode().strip() == "False", out.stderr.decode()
