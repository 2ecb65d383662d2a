"""Reliability drills: kill -9 mid-work and rerun, determinism, bad input through the command lines.

Each drill runs the real code in a subprocess where a crash must be simulated, and checks what a
user would see afterwards. Checkpoint safety (pickled code in a .ckpt) and archive safety (path
traversal in downloads) already have their own tests: tests/test_stage1.py
(test_load_member_roundtrip_and_refusals) and tests/test_clotho.py; they are not repeated here,
except that drill 5c checks the evaluation *command line* refuses such a checkpoint cleanly.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA, TINY_MODEL
from salsa_lib import audio, datasets, stage1, training
from salsa_lib.config import PROFILES, DataConfig, Stage1Config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


# --------------------------------------------------------------------------- helpers


def _env(home: Path) -> dict:
    return {**os.environ, "SALSA_HOME": str(home), "PYTHONPATH": str(REPO)}


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` until true; fail (with the child's output) on timeout or early child exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before {what}:\n{out}\n{err[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _prepare_home(home: Path, monkeypatch) -> None:
    """The tiny synthetic set (notebook 00's outputs) under ``home``, which becomes SALSA_HOME."""
    monkeypatch.setenv("SALSA_HOME", str(home))
    config = DataConfig(profile="test", **TINY_DATA)
    datasets.fetch(config, progress=False)
    datasets.load_splits(config, progress=False)
    datasets.save_data_config(config)


def _config() -> Stage1Config:
    return Stage1Config(profile="test", **{**TINY_MODEL, "epochs": EPOCHS, "members": 1})


def _train_in_process(home: Path, monkeypatch) -> dict:
    monkeypatch.setenv("SALSA_HOME", str(home))
    stage1.train_members(_config(), datasets.load_data_config("test"), progress=False)
    folder = stage1.member_dir("test", 0)
    return {"record": json.loads((folder / "run.json").read_text()),
            "epochs": training.epoch_metrics(folder),
            "weights": torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]}


_REFERENCE: dict[str, dict] = {}


def _reference_run(tmp_path_factory, monkeypatch, name: str = "a") -> dict:
    """An uninterrupted miniature stage-1 run (cached: drills 1 and 4 share it)."""
    if name not in _REFERENCE:
        home = tmp_path_factory.mktemp(f"reference_{name}")
        _prepare_home(home, monkeypatch)
        _REFERENCE[name] = _train_in_process(home, monkeypatch)
    return _REFERENCE[name]


def _assert_same_training(a: dict, b: dict) -> None:
    assert a["record"]["val"] == b["record"]["val"]
    assert a["record"]["best_epoch"] == b["record"]["best_epoch"]
    assert a["epochs"].equals(b["epochs"]), f"per-epoch metrics differ:\n{a['epochs']}\n{b['epochs']}"
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), f"final weights differ at {key}"


# --------------------------------------------------------------------------- drill 1 and 4: training

# Training in a child process that blocks in epoch 2 after its first step (a file barrier that never
# opens), so the kill lands mid-epoch at a known point with last.ckpt at epoch 1.
TRAIN_SCRIPT = """
import sys
from pathlib import Path
import lightning.pytorch as pl
from salsa_lib import datasets, stage1
from salsa_lib.config import Stage1Config

reached = Path(sys.argv[1])

class Block(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 1:
            reached.write_text("in epoch 2")
            while not (reached.parent / "never").exists():
                pass

real = pl.Trainer
pl.Trainer = lambda **kw: real(**{**kw, "callbacks": [*kw["callbacks"], Block()]})
config = Stage1Config(profile="test", **%r)
stage1.train_members(config, datasets.load_data_config("test"), progress=False)
print("finished without being killed")
"""


def _run_until_barrier_then_kill(script: Path, barrier: Path, home: Path, timeout: float, what: str) -> None:
    """Start ``script`` (it creates ``barrier`` when it reaches the point to kill), then kill -9 its group."""
    proc = subprocess.Popen([sys.executable, str(script), str(barrier)], cwd=REPO, env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(barrier.exists, timeout, what, proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_kill9_during_stage1_training_then_rerun_matches_uninterrupted(tmp_path, tmp_path_factory, monkeypatch):
    home = tmp_path / "home"
    _prepare_home(home, monkeypatch)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT % {**TINY_MODEL, "epochs": EPOCHS, "members": 1})
    _run_until_barrier_then_kill(script, tmp_path / "reached", home, 240, "training to reach epoch 2")
    folder = stage1.member_dir("test", 0)
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert not (folder / "run.json").exists()

    resumed = _train_in_process(home, monkeypatch)
    assert sorted(p.name for p in (folder / "logs").iterdir()) == ["attempt0", "attempt1"]
    assert list(resumed["epochs"]["epoch"]) == [0, 1, 2]
    _assert_same_training(resumed, _reference_run(tmp_path_factory, monkeypatch))


def test_training_is_deterministic(tmp_path_factory, monkeypatch):
    _assert_same_training(_reference_run(tmp_path_factory, monkeypatch, "a"),
                          _reference_run(tmp_path_factory, monkeypatch, "b"))


# --------------------------------------------------------------------------- drill 2: audio cache

CACHE_SCRIPT = """
import sys
from pathlib import Path
from salsa_lib import audio, datasets
from salsa_lib.config import DataConfig

barrier = Path(sys.argv[1])
real, calls = audio.load_audio, [0]

def slow_load_audio(path, sample_rate=audio.SAMPLE_RATE):
    calls[0] += 1
    if calls[0] == 4:  # mid-build: three clips already written to the temporary array
        barrier.write_text("blocked")
        while True:
            pass
    return real(path, sample_rate)

audio.load_audio = slow_load_audio
datasets.load_splits(DataConfig(profile="test", **%r), splits=("train",), progress=False)
print("finished without being killed")
"""


def _kill_cache_build_then_rebuild(tmp_path, monkeypatch):
    """Kill -9 a train-split cache build mid-way, then build normally; returns what the checks need."""
    home = tmp_path / "home"
    _prepare_home(home, monkeypatch)  # builds every split's cache once
    config = DataConfig(profile="test", **TINY_DATA)
    cache_dir = datasets.locate(config).cache_dir
    train_cache, val_cache = cache_dir / "development_32000", cache_dir / "validation_32000"
    val_before = {p.name: p.read_bytes() for p in val_cache.iterdir()}
    for path in train_cache.iterdir():  # the train cache is gone: the child must build it anew
        path.unlink()
    train_cache.rmdir()

    script = tmp_path / "cache.py"
    script.write_text(CACHE_SCRIPT % TINY_DATA)
    _run_until_barrier_then_kill(script, tmp_path / "barrier", home, 120, "the cache build to reach clip 4")
    leftovers = [p.name for p in train_cache.iterdir()]
    splits = datasets.load_splits(config, progress=False)  # a normal build
    return dict(config=config, train_cache=train_cache, val_cache=val_cache, val_before=val_before,
                leftovers=leftovers, splits=splits)


def test_kill9_during_audio_cache_build(tmp_path, monkeypatch):
    drill = _kill_cache_build_then_rebuild(tmp_path, monkeypatch)
    # the killed build left only its temporary array: no index, so nothing half-built looks valid
    assert drill["leftovers"] and "index.json" not in drill["leftovers"]
    assert all(name.startswith(".audio-") and ".tmp." in name for name in drill["leftovers"])
    train = drill["splits"]["train"]  # the normal rebuild succeeded and is complete and verified
    assert train.n_clips == TINY_DATA["n_train_clips"]
    assert all(len(train.audio[i]) > 0 for i in range(train.n_clips))
    audio.AudioCache.open(drill["train_cache"], verify=True)
    committed = {p.name for p in drill["train_cache"].iterdir() if not p.name.startswith(".")}
    assert committed == {"index.json", train.audio.index["array_file"]}
    after = {p.name: p.read_bytes() for p in drill["val_cache"].iterdir()}
    assert after == drill["val_before"]  # a complete cache of another split: byte-identical


def test_killed_cache_build_leaves_no_temporary_after_rebuild(tmp_path, monkeypatch):
    drill = _kill_cache_build_then_rebuild(tmp_path, monkeypatch)
    assert sorted(p.name for p in drill["train_cache"].iterdir()) == sorted(
        ["index.json", drill["splits"]["train"].audio.index["array_file"]])


# --------------------------------------------------------------------------- drill 3: notebook runner

def _stand_in_notebook(path: Path, body: str) -> None:
    """Like tests/test_runner.py: 00_data with the real parameters cell, then ``body``."""
    import nbformat

    params = "\n".join(f"{k} = {v!r}" for k, v in PROFILES["tiny"].data.to_params().items())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _runner(notebooks: Path, home: Path, **kwargs):
    return [sys.executable, "-m", "salsa_lib.runner", "--notebooks-dir", str(notebooks), "--quiet"], \
        dict(cwd=REPO, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_kill9_during_notebook_execution(tmp_path):
    home, notebooks = tmp_path / "home", tmp_path / "notebooks"
    notebooks.mkdir()
    out_dir = home / "results" / "tiny" / "notebooks"
    _stand_in_notebook(notebooks / "00_data.ipynb", "print('first version')")
    argv, kwargs = _runner(notebooks, home)
    first = subprocess.run(argv, timeout=300, **kwargs)
    assert first.returncode == 0, first.stderr
    good = (out_dir / "00_data.ipynb").read_bytes()
    stamp = (out_dir / "00_data.stamp.json").read_bytes()

    blocker = tmp_path / "never-appears"
    _stand_in_notebook(notebooks / "00_data.ipynb",
                       f"import pathlib, time\nwhile not pathlib.Path({str(blocker)!r}).exists():\n    time.sleep(0.05)")
    argv, kwargs = _runner(notebooks, home, start_new_session=True)
    proc = subprocess.Popen(argv, **kwargs)
    running = out_dir / "00_data.running.ipynb"
    try:
        _wait_for(running.exists, 240, "the runner to start executing 00_data", proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)  # the whole group: the runner and its kernel
    assert (out_dir / "00_data.ipynb").read_bytes() == good
    assert (out_dir / "00_data.stamp.json").read_bytes() == stamp
    assert not (out_dir / "00_data.failed.ipynb").exists()

    _stand_in_notebook(notebooks / "00_data.ipynb", "print('third version')")
    argv, kwargs = _runner(notebooks, home)
    again = subprocess.run(argv, timeout=300, **kwargs)
    assert again.returncode == 0, again.stderr
    assert "up to date" not in again.stdout and "[00_data] done" in again.stdout
    assert "third version" in (out_dir / "00_data.ipynb").read_text()
    assert not running.exists()


# --------------------------------------------------------------------------- drill 5: bad input end to end

def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_env(home), capture_output=True,
                          text=True, timeout=300)


def _assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_runner_rejects_unknown_parameter(tmp_path):
    result = _cli(tmp_path, "salsa_lib.runner", "-p", "nonexistent_key", "1")
    _assert_clean_failure(result, "error:", "nonexistent_key")


def test_search_rejects_empty_query_and_missing_checkpoint(tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    empty = _cli(tmp_path, "salsa_lib.search", "  ", "--model", str(tmp_path / "x.ckpt"), "--audio-dir", str(audio_dir))
    _assert_clean_failure(empty, "empty query")
    missing = _cli(tmp_path, "salsa_lib.search", "a dog barks", "--model", str(tmp_path / "missing.ckpt"),
                   "--audio-dir", str(audio_dir))
    _assert_clean_failure(missing, "missing.ckpt", "does not exist")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evaluate_evil_checkpoint(tmp_path):
    marker = tmp_path / "payload_ran"
    checkpoint = tmp_path / "evil.ckpt"
    checkpoint.write_bytes(pickle.dumps(_Payload(marker)))
    result = _cli(tmp_path, "salsa_lib.evaluation", "--checkpoint", str(checkpoint), "--data-root", str(tmp_path))
    return marker, result


def test_evaluation_refuses_a_checkpoint_with_code(tmp_path):
    marker, result = _evaluate_evil_checkpoint(tmp_path)
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert result.returncode == 1 and "evil.ckpt" not in result.stdout


def test_evaluation_refuses_a_checkpoint_with_code_without_traceback(tmp_path):
    marker, result = _evaluate_evil_checkpoint(tmp_path)
    assert not marker.exists()
    _assert_clean_failure(result, "error:", "evil.ckpt")


def _custom_set(root: Path) -> None:
    """A two-clip custom set in the ClothoV2 layout whose second clip is not audio."""
    import numpy as np
    import soundfile as sf

    (root / "development").mkdir(parents=True)
    sf.write(root / "development" / "good.wav", np.zeros(16000, dtype=np.float32) + 0.1, 16000)
    (root / "development" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    captions = ",".join(f"caption_{k}" for k in range(1, 6))
    rows = [f"{name},{','.join(f'{name} sound number {k}' for k in range(1, 6))}" for name in ("good.wav", "broken.wav")]
    (root / "clotho_captions_development.csv").write_text("\n".join([f"file_name,{captions}", *rows]) + "\n")


def test_custom_dataset_with_corrupt_wav(tmp_path, monkeypatch):
    from salsa_lib.errors import DataError

    monkeypatch.setenv("SALSA_HOME", str(tmp_path / "home"))
    root = tmp_path / "mine"
    _custom_set(root)
    config = DataConfig(dataset="custom", data_root=str(root))
    datasets.fetch(config, progress=False)
    with pytest.raises(DataError) as info:
        datasets.load_splits(config, splits=("train",), progress=False)
    message = str(info.value)
    assert "broken.wav" in message and "line 3" in message and "clotho_captions_development.csv" in message

    tolerant = config.replace(skip_bad_clips=True)
    split = datasets.load_splits(tolerant, splits=("train",), progress=False)["train"]
    assert split.file_names == ["good.wav"] and split.n_captions == 5
    report_path = datasets.locate(tolerant).cache_dir / "development_skipped.csv"
    import pandas as pd

    report = pd.read_csv(report_path)
    assert list(report.file_name) == ["broken.wav"] and list(report.csv_row) == [3]
    assert "corrupt" in report.reason[0] or "not an audio file" in report.reason[0]
