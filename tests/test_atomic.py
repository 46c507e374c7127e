"""speechllm.atomic: what it writes appears whole or not at all, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from speechllm.atomic import atomic_directory, atomic_path, atomic_write, atomic_write_text


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert _names(tmp_path) == ["out.txt"]  # no temporary file left behind
    with atomic_write(path, durable=True) as f:
        f.write("new\n")
        assert path.read_text() == "old\n"  # readers still see the old file while writing
    assert path.read_text() == "new\n"
    assert _names(tmp_path) == ["out.txt"]


def test_binary_mode_and_a_missing_folder(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    with atomic_write(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode must start with 'w', got 'a'"), atomic_write(path, "a"):
        pass


def test_files_and_folders_get_the_permissions_of_an_ordinary_write(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.wav") as tmp:
            tmp.write_bytes(b"RIFF")
        with atomic_directory(tmp_path / "ckpt") as tmp:
            (tmp / "w").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.wav").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755


def test_atomic_directory_replaces_a_folder_whole_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed mid-save")
    assert _names(target) == ["a", "b"] and (target / "a").read_text() == "1"
    with atomic_directory(target, durable=True) as tmp:
        (tmp / "c").write_text("3")
    assert _names(target) == ["c"]  # the new folder replaces the old one, not merged into it
    assert _names(tmp_path) == ["ckpt"]
