"""bench_share: processes timed over one window, their images/s summed; failures exit non-zero."""

from __future__ import annotations

import re

import pytest

from lsq.tools import bench_share

TINY = ["--N", "8", "--M", "24", "--batch", "1", "--crop", "64", "--warmup", "1",
        "--seconds", "0.5", "--device", "cpu"]


def test_two_processes_report_and_sum(capsys: pytest.CaptureFixture[str]) -> None:
    bench_share.main(["--quantizers", "scalar,leech", *TINY])
    out = capsys.readouterr().out
    rates = {q: int(r) for q, r in re.findall(r"^(\w+): (\d+) images/s$", out, re.M)}
    assert set(rates) == {"leech", "scalar"} and all(r > 0 for r in rates.values())
    together = int(re.search(r"^together: (\d+) images/s over 0.5 s \(2 processes", out,
                             re.M).group(1))
    assert abs(together - sum(rates.values())) <= 1


def test_a_failing_process_fails_the_run() -> None:
    with pytest.raises(SystemExit, match="nope"):
        bench_share.main(["--quantizers", "scalar,nope", *TINY])
