"""Atomic writes: all or nothing at the target path, normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from stylize.fileio import atomic_path, atomic_write_bytes


def test_success_renames_onto_target_with_normal_mode(tmp_path):
    target = tmp_path / "sub" / "out.png"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]


def test_failure_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.jpg"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".jpg" and tmp.name.startswith(".")
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]
