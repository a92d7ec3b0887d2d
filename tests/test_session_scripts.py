"""models/train_session.sh turns run names into the right training commands: a wrong flag
there costs a whole GPU session, so its parsing is checked here with a stand-in trainer."""

import subprocess
import sys
import time
from pathlib import Path

from lsq.models import weights_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "models" / "train_session.sh"
#: The weights the stand-in tree ships, whatever models/weights holds today.
SHIPPED = ("leech", "scalar", "spherical-leech", "scalar-cgf")


def session_commands(tmp_path: Path, *names: str, env: dict | None = None) -> dict[str, str]:
    """{run name: the arguments train_session.sh gives lsq.models.train} for NAMES, run in a
    tree whose models/weights holds SHIPPED (the script resolves its --init files there)."""
    tree = tmp_path / "tree"
    for name in SHIPPED:
        config = dict.fromkeys(weights_file.REQUIRED_KEYS, 0) | {"name": name,
                                                                 "default_quality": 3.5}
        weights_file.save({}, tree / "models" / "weights" / f"{name}.safetensors", config)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"  # prints a training command's arguments, runs anything else
    fake.write_text(f'#!/usr/bin/env bash\nif [[ $1 == -m ]]; then shift 2; '
                    f'echo "$@ CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; '
                    f'else exec "{sys.executable}" "$@"; fi\n')
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    path = f"{bin_dir}:/usr/bin:/bin"
    subprocess.run(["bash", str(SCRIPT), "/data", str(runs), "20", "17", *names], cwd=tree,
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
                            "bsq-m96-q2", "spherical-leech-cg-lrp", "leech-cgf",
                            "scalar-cgf-lrp", "leech-cg",
                            env={"COMPILE": "inductor", "TRAIN_ARGS": "--channels-last --bf16"})
    leech = cmds["leech"].split()
    assert leech[leech.index("--quantizer") + 1] == "leech"
    assert "--init models/weights/leech.safetensors --warmup-steps 500" in cmds["leech"]
    assert "--steps 150000" in cmds["leech"] and "--compile inductor" in cmds["leech"]
    assert "--max-minutes 20 --lr-drop-minutes 17" in cmds["leech"]
    assert all(cmd.split()[-3:-1] == ["--channels-last", "--bf16"] for cmd in cmds.values())
    assert "--steps 600" in cmds["scalar"]
    assert "--init-transforms models/weights/leech.safetensors" in cmds["spherical-leech"]
    assert "--init " not in cmds["spherical-leech"]
    assert "--quantizer bsq --M 96 --quality-min 2 --quality-max 2" in cmds["bsq-m96-q2"]
    assert "--default-quality 2 " in cmds["bsq-m96-q2"]
    lrp = cmds["spherical-leech-cg-lrp"]  # falls back to the shipped model without -cg-lrp
    assert "--quantizer spherical-leech --lrp --context channel-groups" in lrp
    assert "--init models/weights/spherical-leech.safetensors" in lrp
    full = cmds["leech-cgf"]  # full group transforms, from the hyperprior model
    assert "--quantizer leech --group-transform full --context channel-groups" in full
    assert "--init models/weights/leech.safetensors" in full
    assert "--default-quality 3.5 " in full
    full_lrp = cmds["scalar-cgf-lrp"]  # from the shipped model without LRP
    assert "--quantizer scalar --lrp --group-transform full --context channel-groups" in full_lrp
    assert "--init models/weights/scalar-cgf.safetensors" in full_lrp
    assert "--init models/weights/leech.safetensors" in cmds["leech-cg"]
    assert cmds["leech"].endswith("CUDA_VISIBLE_DEVICES=0")  # one GPU (none here): all on 0
    assert lrp.endswith("CUDA_VISIBLE_DEVICES=0")


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
