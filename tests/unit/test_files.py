"""p2pfl._files: a file is replaced whole or not at all."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from p2pfl._files import atomic_write, remove_if_unlocked, sync_written, temp_prefix, write_atomically


def test_write_atomically_replaces_the_file_and_leaves_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "sub" / "file.toml"
    write_atomically(path, "old\n")
    write_atomically(path, "new ü\n")
    assert path.read_text(encoding="utf-8") == "new ü\n"
    write_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.toml"]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_the_mode_is_the_one_asked_for_and_0600_by_default(tmp_path) -> None:
    secret, public, plain = tmp_path / "k_secret", tmp_path / "k", tmp_path / "p"
    write_atomically(secret, "s", mode=0o600)
    write_atomically(public, "p", mode=0o644)
    write_atomically(plain, "x")
    assert [stat.S_IMODE(p.stat().st_mode) for p in (secret, public, plain)] == [0o600, 0o644, 0o600]


def test_a_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "state.json"
    write_atomically(path, "complete\n")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("half of")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_a_locked_temporary_file_survives_the_cleaner_until_renamed(tmp_path) -> None:
    path = tmp_path / "model.pt"
    writing, release = threading.Event(), threading.Event()
    temporaries = []

    def write() -> None:
        with atomic_write(path, binary=True, lock=True) as handle:
            handle.write(b"weights")
            temporaries.extend(tmp_path.glob(f"{temp_prefix(path)}*"))
            writing.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert writing.wait(10)
        assert len(temporaries) == 1 and not remove_if_unlocked(temporaries[0])  # a live writer holds it
    finally:
        release.set()
        writer.join()
    assert path.read_bytes() == b"weights"
    stale = tmp_path / f"{temp_prefix(path)}dead.tmp"  # a killed writer's: nobody holds it
    stale.write_bytes(b"half")
    assert remove_if_unlocked(stale) and not stale.exists()


def test_a_batch_written_without_a_sync_each_is_complete_and_synced_once(tmp_path, monkeypatch):
    syncs = []
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd))
    paths = [tmp_path / "models" / f"n{i}.pt" for i in range(3)]
    for i, path in enumerate(paths):
        with atomic_write(path, binary=True, sync=False) as handle:
            handle.write(bytes([i]) * 4)
    assert syncs == []  # none per file
    sync_written(paths)
    assert [path.read_bytes() for path in paths] == [bytes([i]) * 4 for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["n0.pt", "n1.pt", "n2.pt"]  # no temp left
