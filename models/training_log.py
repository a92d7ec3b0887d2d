"""Training logs as committed CSVs and a training-curve plot.

    python -m lsq.models.training_log NAME LOG.jsonl[:STEP] [LOG.jsonl[:STEP] ...] -o DIR

Writes DIR/NAME.csv (one row per logged interval: step, images/s, loss, bpp, PSNR of the
training crops at random qualities), DIR/NAME-val.csv (held-out bpp and PSNR per quality)
and DIR/NAME.png. Several logs are one run continued: a log that restarted its count
(``--init``: its first step is not past the run so far) is shifted to follow the previous
one's last step, or STEP, the step of the weights the next log started from (later
records of that log are dropped); a log that counts on (``--continue-from``, an exact
resume) keeps its steps. Events (a rollback's record) are left out.
A committed DIR/NAME.csv (with its NAME-val.csv) can stand first, so a later session extends
the shipped log without the earlier sessions' log.jsonl files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

TRAIN_KEYS = ("step", "images_per_s", "loss", "bpp", "psnr", "lr")


def read_csv(path: Path) -> list[dict]:
    """The rows of a log CSV written here, cells as numbers (empty ones left out)."""
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def _number(text: str) -> int | float:
    """A CSV cell as the int or float it was written from, so a re-written log is unchanged."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _records(path: Path) -> list[dict]:
    """A log.jsonl's records, or a committed NAME.csv's rows and its NAME-val.csv's."""
    if path.suffix == ".csv":
        return read_csv(path) + read_csv(path.with_name(f"{path.stem}-val.csv"))
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def read_logs(specs: list[str]) -> tuple[list[dict], list[dict]]:
    """(training records, validation records), steps made continuous across the logs."""
    train, val, offset = [], [], 0
    for spec in specs:
        path, _, until = spec.partition(":")
        records = _records(Path(path))
        last = int(until) if until else max((r["step"] for r in records), default=0)
        shift = 0 if min((r["step"] for r in records), default=0) > offset else offset
        for r in records:
            if r["step"] > last:
                continue
            if "val_images" in r:
                val.append({**r, "step": r["step"] + shift})
            elif "loss" in r:  # not an event such as a rollback
                train.append({**r, "step": r["step"] + shift})
        offset = last + shift
    return train, val


def to_csv(rows: list[dict], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.models.training_log")
    parser.add_argument("name")
    parser.add_argument("logs", nargs="+",
                        help="log.jsonl files (a committed NAME.csv may come first), "
                        "each optionally :STEP")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = read_logs(args.logs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.csv").write_text(to_csv(train, list(TRAIN_KEYS)))
    val_keys = ["step"] + sorted({k for r in val for k in r if k.startswith("val_")})
    (args.out / f"{args.name}-val.csv").write_text(to_csv(val, val_keys))
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax_loss.set(xlabel="step", ylabel="training loss (random qualities)", yscale="log")
    qualities = sorted({int(k.rsplit("q", 1)[1]) for k in val_keys if k.startswith("val_psnr")})
    for q in qualities:
        points = [(r["step"], r[f"val_psnr_q{q}"]) for r in val if f"val_psnr_q{q}" in r]
        ax_psnr.plot(*zip(*points, strict=True), marker=".", label=f"q{q}")
    ax_psnr.set(xlabel="step", ylabel="held-out PSNR (dB)")
    ax_psnr.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{args.name}: training curves")
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=90)
    print(f"{args.name}: {len(train)} training and {len(val)} validation records")


if __name__ == "__main__":
    main()
