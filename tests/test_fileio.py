"""lsq.fileio.write_atomic: whole files or nothing, no clobbering on request, no leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lsq.fileio import write_atomic


def test_write_replace_and_refuse(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    write_atomic(target, b"one", overwrite=False)
    with pytest.raises(FileExistsError) as info:
        write_atomic(target, b"two", overwrite=False)
    assert info.value.filename == str(target) and target.read_bytes() == b"one"
    write_atomic(target, memoryview(b"three"))
    assert target.read_bytes() == b"three"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_errors_name_the_target_and_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "folder", b"x")
    assert info.value.filename == str(tmp_path / "folder")
    with pytest.raises(FileNotFoundError) as info:
        write_atomic(tmp_path / "missing" / "a.bin", b"x")
    assert info.value.filename == str(tmp_path / "missing" / "a.bin")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
