"""Bad input while indexing: each case gives a clear note and leaves a consistent cache behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import filelock
import numpy as np
import pytest
import soundfile as sf

from salsa_lib.errors import DataError
from salsa_lib.search import retrieval, sounds

from search_stub import StubModel

SR = 32000


def _write(path, seconds=12.0, freq=440.0):
    t = np.arange(int(seconds * 8000)) / 8000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "library"
    root.mkdir()
    for i, name in enumerate(["a.wav", "b.flac", "c.wav"]):
        _write(root / name, freq=300 + 500 * i)
    return root


def _consistent(root, expected_paths):
    """A fresh run reuses everything the last one cached and lists exactly ``expected_paths``."""
    again = retrieval.build_index(root, StubModel(), "stub", progress=False)
    assert again.paths == expected_paths and again.stats["embedded"] == 0
    return again


def test_unreadable_entries_are_listed_not_fatal(folder):
    (folder / "gone.wav").symlink_to(folder / "nowhere.wav")  # a dangling link
    os.mkfifo(folder / "pipe.wav")  # opening it would block: never opened
    index = retrieval.build_index(folder, StubModel(), "stub", progress=False)
    reasons = dict(index.skipped)
    assert reasons["gone.wav"].startswith("cannot read (No such file") and reasons["pipe.wav"] == "not a regular file"
    assert index.paths == ["a.wav", "b.flac", "c.wav"]
    _consistent(folder, ["a.wav", "b.flac", "c.wav"])


def test_symlink_loops_are_noted_and_not_followed(folder):
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)
    os.symlink("loop2.wav", folder / "loop1.wav")
    os.symlink("loop1.wav", folder / "loop2.wav")
    index = retrieval.build_index(folder, StubModel(), "stub", progress=False)
    reasons = dict(index.skipped)
    assert reasons["loop1.wav"] == "symbolic link loop" and "not followed" in reasons["sub/up"]
    assert index.paths == ["a.wav", "b.flac", "c.wav"]  # each file once, however many ways lead to it
    _consistent(folder, ["a.wav", "b.flac", "c.wav"])


def test_a_file_deleted_between_listing_and_reading_is_reported(folder, monkeypatch):
    listing = sounds.list_files

    def list_then_delete(root):
        found = listing(root)
        (folder / "b.flac").unlink()
        return found

    monkeypatch.setattr(sounds, "list_files", list_then_delete)
    index = retrieval.build_index(folder, StubModel(), "stub", progress=False)
    assert dict(index.skipped)["b.flac"].startswith("disappeared after it was listed")
    monkeypatch.undo()
    _consistent(folder, ["a.wav", "c.wav"])


def test_a_file_rewritten_while_read_is_left_out_and_indexed_next_time(folder, monkeypatch):
    stream = sounds.stream_windows

    def rewrite_during_read(path, *args, **kwargs):
        for i, item in enumerate(stream(path, *args, **kwargs)):
            if path.name == "a.wav" and i == 0:
                _write(path, seconds=20.0, freq=900.0)  # another process saves a new version
                os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
            yield item

    monkeypatch.setattr(sounds, "stream_windows", rewrite_during_read)
    index = retrieval.build_index(folder, StubModel(), "stub", progress=False)
    assert index.paths == ["b.flac", "c.wav"] and any("a.wav changed while" in n for n in index.notes)
    monkeypatch.undo()
    later = retrieval.build_index(folder, StubModel(), "stub", progress=False)
    assert later.paths == ["a.wav", "b.flac", "c.wav"] and later.stats == {"reused": 2, "embedded": 1, "removed": 0}
    assert later.durations[0] == pytest.approx(20.0)
    _consistent(folder, ["a.wav", "b.flac", "c.wav"])


def test_a_busy_lock_is_waited_for_then_reported(folder):
    lock = filelock.FileLock(str(folder / ".salsa_index" / "stub.lock"))
    (folder / ".salsa_index").mkdir()
    with lock:  # another process holds the folder
        with pytest.raises(DataError, match="another process has been indexing"):
            retrieval.build_index(folder, StubModel(), "stub", progress=False, lock_timeout=0.05)
    assert not (folder / ".salsa_index" / "stub.npz").exists()  # nothing half-written
    assert len(retrieval.build_index(folder, StubModel(), "stub", progress=False)) == 3


def test_two_processes_indexing_one_folder_share_the_work(folder):
    stub = Path(__file__).with_name("search_stub.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    runs = [subprocess.Popen([sys.executable, str(stub), str(folder)], stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    reports = [json.loads(run.communicate(timeout=300)[0].splitlines()[-1]) for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert all(r["files"] == 3 for r in reports)
    assert sorted(r["stats"]["embedded"] for r in reports) == [0, 3]  # the second reused the first's cache
    _consistent(folder, ["a.wav", "b.flac", "c.wav"])
