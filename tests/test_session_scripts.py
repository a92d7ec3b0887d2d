"""models/train_session.sh and collect_session.sh: a wrong flag there costs a whole GPU
session, so the commands they give and their failure paths are checked here with stand-ins."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from lsq.training import checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "models" / "train_session.sh"


def session_commands(tmp_path: Path, *names: str, env: dict | None = None) -> dict[str, str]:
    """{run name: the arguments train_session.sh gives lsq.training} for NAMES."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"  # prints a training command's arguments, runs anything else
    fake.write_text(f'#!/usr/bin/env bash\nif [[ $1 == -m ]]; then shift 2; '
                    f'echo "$@ CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; '
                    f'else exec "{sys.executable}" "$@"; fi\n')
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    path = f"{bin_dir}:/usr/bin:/bin"
    subprocess.run(["bash", str(SCRIPT), "/data", str(runs), "20", "17", *names], cwd=tmp_path,
                   check=True, env={"PATH": path, **(env or {})}, timeout=60)
    stems = (name.split("@")[0].split(":")[0] for name in names)  # NAME[:STEPS][@FROM]
    logs = {stem: runs / f"{stem}.log" for stem in stems}
    deadline = time.monotonic() + 30  # the runs start in the background
    while not all(p.is_file() and p.read_text().endswith("\n") for p in logs.values()):
        assert time.monotonic() < deadline, "the stand-in runs did not finish"
        time.sleep(0.1)
    return {name: log.read_text().strip() for name, log in logs.items()}


def test_train_session_builds_each_runs_command(tmp_path: Path) -> None:
    cmds = session_commands(tmp_path, "leech", "scalar:600", "spherical-leech@leech",
                            "leech-cgf",
                            env={"COMPILE": "inductor", "TRAIN_ARGS": "--channels-last --bf16"})
    assert cmds["leech"].startswith(f"--preset leech --out {tmp_path}/runs/leech --name leech ")
    assert "--init auto --warmup-steps 500" in cmds["leech"]
    assert "--steps 150000" in cmds["leech"] and "--compile inductor" in cmds["leech"]
    assert "--max-minutes 20 --lr-drop-minutes 17" in cmds["leech"]
    assert all(cmd.split()[-3:-1] == ["--channels-last", "--bf16"] for cmd in cmds.values())
    assert "--steps 600" in cmds["scalar"] and "--preset scalar " in cmds["scalar"]
    assert "--init-transforms models/weights/leech.safetensors" in cmds["spherical-leech"]
    assert "--init " not in cmds["spherical-leech"]
    assert "--preset leech-cgf " in cmds["leech-cgf"]
    assert cmds["leech"].endswith("CUDA_VISIBLE_DEVICES=0")  # one GPU (none here): all on 0


def test_train_session_spreads_runs_over_the_gpus(tmp_path: Path) -> None:
    cmds = session_commands(tmp_path, "leech", "scalar", "leech-cg", "bsq-q2", "scalar-cg",
                            env={"GPUS": "4"})
    devices = {name: cmd.rsplit("=", 1)[1] for name, cmd in cmds.items()}
    assert devices == {"leech": "0", "scalar": "1", "leech-cg": "2", "bsq-q2": "3",
                       "scalar-cg": "0"}


def test_collect_session_stops_at_once_without_lsq(tmp_path: Path) -> None:
    """A missing PYTHONPATH on the GPU machine is reported before the wait, not after it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/usr/bin/env bash\nexit 1\n")  # 'import lsq' fails
    (bin_dir / "python3").chmod(0o755)
    result = subprocess.run(
        ["bash", str(ROOT / "models" / "collect_session.sh"), str(tmp_path), str(tmp_path / "o"),
         "600"], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 1 and "lsq is not importable" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_collected_checkpoint_copy_is_whole_and_loads(tmp_path: Path) -> None:
    """What collect_session.sh returns with CHECKPOINTS=1: the manifest and its parts."""
    state = {"step": 7, "w": torch.arange(300_000, dtype=torch.float32)}
    checkpoint.save(tmp_path / "run", state, part_bytes=500_000)
    result = subprocess.run([sys.executable, "-m", "lsq.training.checkpoint",
                             str(tmp_path / "run"), str(tmp_path / "back")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "back" / checkpoint.MANIFEST).read_text())
    assert len(manifest["parts"]) == 3 and "3 parts" in result.stdout
    assert torch.equal(checkpoint.load(tmp_path / "back")["w"], state["w"])
    two = tmp_path / "in-two-calls"  # a checkpoint too large for one return
    for first in ("0", "2"):
        subprocess.run([sys.executable, "-m", "lsq.training.checkpoint", str(tmp_path / "run"),
                        str(two / first), first, "2"], check=True, timeout=120)
    assert len(list((two / "0").glob("ckpt-*.bin"))) == 2
    assert len(list((two / "2").glob("ckpt-*.bin"))) == 1
    for part in (two / "2").iterdir():
        shutil.copyfile(part, two / "0" / part.name)
    assert torch.equal(checkpoint.load(two / "0")["w"], state["w"])
    result = subprocess.run([sys.executable, "-m", "lsq.training.checkpoint",
                             str(tmp_path / "none"), str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
