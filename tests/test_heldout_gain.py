"""The held-out gain of a session (the stop rule), from a model's validation CSV."""

import csv
from pathlib import Path

import pytest

from lsq.models.training_log import read_csv
from lsq.tools import heldout_gain

QUALITIES = range(1, 9)


def write_log(path: Path, rows: list[tuple[int, float]]) -> None:
    """Validation rows (step, PSNR offset) over the same rates at every quality."""
    fields = ["step", *(f"val_bpp_q{q}" for q in QUALITIES), *(f"val_psnr_q{q}" for q in QUALITIES)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for step, offset in rows:
            writer.writerow({"step": step, **{f"val_bpp_q{q}": 0.15 * q for q in QUALITIES},
                             **{f"val_psnr_q{q}": 27 + 1.3 * q + offset for q in QUALITIES}})


def test_gain_is_the_psnr_shift_since_the_sessions_start(tmp_path: Path, capsys) -> None:
    write_log(tmp_path / "m-val.csv", [(1000, 0.0), (2000, 0.1), (3000, 0.25), (33_250, 0.4)])
    first, last, db = heldout_gain.gain(read_csv(tmp_path / "m-val.csv"), 2500)
    assert (first, last) == (2000, 33_250) and db == pytest.approx(0.3, abs=1e-9)
    heldout_gain.main(["m:2500", "--logs", str(tmp_path)])  # 31,250 steps = 500k crops
    assert capsys.readouterr().out.strip() == (
        "m: step 2,000 -> 33,250: +0.300 dB over 500k crops, +0.300 dB per 500k")
    heldout_gain.main(["m:2500", "--logs", str(tmp_path), "--crops-per-step", "128"])
    assert capsys.readouterr().out.strip() == (  # a batch of 128: eight times the crops
        "m: step 2,000 -> 33,250: +0.300 dB over 4000k crops, +0.037 dB per 500k")


def test_an_end_step_measures_part_of_a_session(tmp_path: Path, capsys) -> None:
    """Up to a learning-rate drop: a loss shows as a negative gain."""
    write_log(tmp_path / "m-val.csv", [(1000, 0.3), (2000, 0.1), (3000, 0.5)])
    assert heldout_gain.gain(read_csv(tmp_path / "m-val.csv"), 1000, 2999)[:2] == (1000, 2000)
    heldout_gain.main(["m:1000-2999", "--logs", str(tmp_path)])
    assert capsys.readouterr().out.startswith("m: step 1,000 -> 2,000: -0.200 dB over 16k crops")


def test_bad_requests_exit_with_a_message(tmp_path: Path) -> None:
    write_log(tmp_path / "m-val.csv", [(1000, 0.0), (2000, 0.1)])
    for spec, message in [("m", "expected NAME:STEP"), ("m:500", "no validation row"),
                          ("m:1000-", "expected NAME:STEP"), ("m:1000-x", "expected NAME:STEP"),
                          ("m:1000-1500", "at or before 1500"), ("m:1000-500", "before 500"),
                          ("other:1000", "No such file")]:
        with pytest.raises(SystemExit, match=message):
            heldout_gain.main([spec, "--logs", str(tmp_path)])
