"""The committed training logs: several runs joined into one CSV, and a shipped CSV extended."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lsq.models import training_log


def _write_log(path: Path, steps: list[int], val_steps: list[int]) -> Path:
    records = [{"step": s, "images_per_s": 100.0, "loss": 1.0 / s, "bpp": 0.5, "psnr": 30.0,
                "lr": 2e-4} for s in steps]
    records += [{"step": s, "val_images": 30, "val_bpp_q1": 0.3, "val_psnr_q1": 27.0 + s / 1000}
                for s in val_steps]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _column(path: Path, key: str) -> list[float]:
    with path.open(newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def test_a_shipped_csv_is_extended_by_a_later_sessions_log(tmp_path):
    first = _write_log(tmp_path / "a/log.jsonl", [200, 400, 600], [500])
    second = _write_log(tmp_path / "b/log.jsonl", [200, 400], [200])
    shipped, extended = tmp_path / "shipped", tmp_path / "extended"
    training_log.main(["m", f"{first}:500", "-o", str(shipped)])
    assert _column(shipped / "m.csv", "step") == [200, 400]
    training_log.main(["m", f"{shipped / 'm.csv'}:550", str(second), "-o", str(extended)])
    assert _column(extended / "m.csv", "step") == [200, 400, 750, 950]
    assert _column(extended / "m.csv", "loss") == [1 / 200, 1 / 400, 1 / 200, 1 / 400]
    assert _column(extended / "m-val.csv", "step") == [500, 750]
    assert _column(extended / "m-val.csv", "val_psnr_q1") == [27.5, 27.2]
    assert (extended / "m.png").stat().st_size > 0
    # the shipped rows come back byte for byte (val_images stays "30", not "30.0")
    for name in ("m.csv", "m-val.csv"):
        shipped_text = (shipped / name).read_text()
        assert (extended / name).read_text().startswith(shipped_text)


def test_a_continued_log_keeps_its_steps_and_a_restarted_one_follows(tmp_path):
    first = _write_log(tmp_path / "a/log.jsonl", [200, 400, 600], [600])
    continued = _write_log(tmp_path / "b/log.jsonl", [750, 1000], [1000])  # --continue-from 600
    restarted = _write_log(tmp_path / "c/log.jsonl", [250], [])  # --init: counts from 0
    training_log.main(["m", str(first), str(continued), str(restarted), "-o", str(tmp_path)])
    assert _column(tmp_path / "m.csv", "step") == [200, 400, 600, 750, 1000, 1250]
    assert _column(tmp_path / "m-val.csv", "step") == [600, 1000]


def test_a_rollback_record_is_left_out_of_both_files(tmp_path):
    log = _write_log(tmp_path / "a/log.jsonl", [200, 400], [400])
    with log.open("a") as f:
        f.write(json.dumps({"step": 400, "rollback_from": 480, "lr_scale": 0.5}) + "\n")
        f.write(json.dumps({"step": 600, "images_per_s": 1.0, "loss": 0.5, "bpp": 0.5,
                            "psnr": 30.0, "lr": 1e-4}) + "\n")
    training_log.main(["m", str(log), "-o", str(tmp_path)])
    assert _column(tmp_path / "m.csv", "step") == [200, 400, 600]
    assert _column(tmp_path / "m-val.csv", "step") == [400]
