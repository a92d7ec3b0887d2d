"""bench_share: processes released together, their images/s summed; failures exit non-zero.

Each process times a fixed number of steps (--seconds 0), so nothing here depends on how
fast the machine is.
"""

from __future__ import annotations

import re

import pytest

from lsq.tools import bench_share

TINY = ["--N", "8", "--M", "24", "--batch", "1", "--crop", "64", "--warmup", "1",
        "--seconds", "0", "--steps", "2", "--device", "cpu"]


def test_two_processes_report_and_sum(capsys: pytest.CaptureFixture[str]) -> None:
    rates = bench_share.main(["--quantizers", "scalar,leech", *TINY])
    out = capsys.readouterr().out
    assert set(rates) == {"leech", "scalar"} and all(r > 0 for r in rates.values())
    printed = dict(re.findall(r"^(\w+): ([\d.]+) images/s$", out, re.M))
    assert printed == {q: f"{r:.1f}" for q, r in rates.items()}
    assert re.search(rf"^together: {sum(rates.values()):.1f} images/s over 2 steps each "
                     r"\(2 processes, batch 1, crop 64\)$", out, re.M), out


def test_a_failing_process_fails_the_run() -> None:
    with pytest.raises(SystemExit, match="nope"):
        bench_share.main(["--quantizers", "scalar,nope", *TINY])


def test_needs_a_window_or_steps() -> None:
    with pytest.raises(SystemExit):
        bench_share.main(["--quantizers", "scalar", "--seconds", "0", "--steps", "0"])
