import json

import pytest

from lsq.tools import compare_runs


def write_log(path, steps, psnr_shift=0.0):
    with open(path, "w") as f:
        for step in steps:
            f.write(json.dumps({"step": step, "images_per_s": 1.0, "elapsed_s": step}) + "\n")
            row = {"step": step, "val_images": 3}
            for q in range(1, 9):
                row[f"val_bpp_q{q}"] = 0.1 * q
                row[f"val_psnr_q{q}"] = 25.0 + 2.0 * q ** 0.5 + psnr_shift + step / 1e4
            f.write(json.dumps(row) + "\n")


def test_shifted_curve_gives_its_shift(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log(a, [100], 0.0)
    write_log(b, [100], 0.5)
    figures = compare_runs.compare(compare_runs.validation_rows(a)[-1],
                                   compare_runs.validation_rows(b)[-1])
    assert set(figures) == {"q1-8", "q1-4", "q5-8"}
    for dpsnr, drate in figures.values():
        assert dpsnr == pytest.approx(0.5, abs=1e-6)
        assert drate < 0


def test_equal_crops_takes_both_runs_at_the_shorter_runs_crops(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log(a, [1000, 2000], 0.0)  # batch 16: 32,000 crops at the end
    write_log(b, [100, 250, 400], 0.0)  # batch 128: step 250 is 32,000 crops
    compare_runs.main([f"{a}:16", f"{b}:128"])
    out = capsys.readouterr().out
    assert f"equal crops: A {a} step 2000, 32,000 crops; B {b} step 250, 32,000 crops" in out


def test_equal_crops_when_the_test_run_is_shorter(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log(a, [100, 200, 300], 0.0)
    write_log(b, [100, 200], 0.5)  # same batch, shorter: A is taken at step 200 too
    compare_runs.main([f"{a}:16", f"{b}:16"])
    out = capsys.readouterr().out.split("at equal crops")[1]
    assert f"A {a} step 200, 3,200 crops; B {b} step 200, 3,200 crops" in out
    assert "q1-8: BD-PSNR +0.500 dB" in out


def test_bad_spec_exits_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match="expected LOG.jsonl:BATCH"):
        compare_runs.main([str(tmp_path / "a.jsonl"), "b:16"])


def test_steps_compare_at_each_and_a_run_may_span_several_logs(tmp_path, capsys):
    a1, a2, b = tmp_path / "a1.jsonl", tmp_path / "a2.jsonl", tmp_path / "b.jsonl"
    write_log(a1, [100, 200], 0.0)
    write_log(a2, [200, 300], 0.2)  # a later session: its step 200 replaces the first's
    write_log(b, [100, 200, 300], 0.5)
    compare_runs.main([f"{a1},{a2}:16", f"{b}:16", "--steps", "100,200"])
    out = capsys.readouterr().out
    assert "equal time" not in out
    first, second = out.split("at equal crops")[1:]
    assert f"A {a1},{a2} step 100" in first and "q1-8: BD-PSNR +0.500 dB" in first
    assert f"A {a1},{a2} step 200" in second and "q1-8: BD-PSNR +0.300 dB" in second
    with pytest.raises(SystemExit, match="no validation row at step 150"):
        compare_runs.main([f"{a1}:16", f"{b}:16", "--steps", "150"])
    with pytest.raises(SystemExit):
        compare_runs.main([f"{a1}:16", f"{b}:16", "--steps", "x"])
