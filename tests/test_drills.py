"""Reliability drills: kill -9 mid-work and rerun, determinism, bad input through the command lines.

Each drill runs the real code in a subprocess where a crash must be simulated, and checks what a
user would see afterwards. Bad input: every class of the data issue through the data command
(``python -m salsa_lib.data_sources``) and one through ``./run_all.sh``; the demo's through the search
command. Checkpoint safety (pickled code in a .ckpt) and archive safety (path traversal in
downloads) have their own tests: tests/stages/test_stage1.py (test_load_member_roundtrip_and_refusals) and
tests/data/test_clotho.py; here the evaluation *command line* is checked to refuse such a checkpoint cleanly.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA, TINY_MODEL
from salsa_lib import runs
from salsa_lib.config import DataConfig, Stage1Config
from salsa_lib.data import audio_cache, data_sources
from salsa_lib.profiles import PROFILES
from salsa_lib.stages import run_folders, stage1

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
    data_sources.fetch(config, progress=False)
    data_sources.load_splits(config, progress=False)
    data_sources.save_data_config(config)


def _config() -> Stage1Config:
    return Stage1Config(profile="test", **{**TINY_MODEL, "epochs": EPOCHS, "members": 1})


def _train_in_process(home: Path, monkeypatch) -> dict:
    monkeypatch.setenv("SALSA_HOME", str(home))
    stage1.train_members(_config(), data_sources.load_data_config("test"), progress=False)
    folder = runs.member_dir("test", 0)
    return {"record": json.loads((folder / "run.json").read_text()),
            "epochs": run_folders.epoch_metrics(folder),
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
from salsa_lib.data import data_sources
from salsa_lib.stages import stage1
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
stage1.train_members(config, data_sources.load_data_config("test"), progress=False)
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
    folder = runs.member_dir("test", 0)
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
from salsa_lib.data import audio, data_sources
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
data_sources.load_splits(DataConfig(profile="test", **%r), splits=("train",), progress=False)
print("finished without being killed")
"""


def _kill_cache_build_then_rebuild(tmp_path, monkeypatch):
    """Kill -9 a train-split cache build mid-way, then build normally; returns what the checks need."""
    home = tmp_path / "home"
    _prepare_home(home, monkeypatch)  # builds every split's cache once
    config = DataConfig(profile="test", **TINY_DATA)
    cache_dir = data_sources.locate(config).cache_dir
    train_cache, val_cache = cache_dir / "development_32000", cache_dir / "validation_32000"
    val_before = {p.name: p.read_bytes() for p in val_cache.iterdir()}
    for path in train_cache.iterdir():  # the train cache is gone: the child must build it anew
        path.unlink()
    train_cache.rmdir()

    script = tmp_path / "cache.py"
    script.write_text(CACHE_SCRIPT % TINY_DATA)
    _run_until_barrier_then_kill(script, tmp_path / "barrier", home, 120, "the cache build to reach clip 4")
    leftovers = [p.name for p in train_cache.iterdir()]
    splits = data_sources.load_splits(config, progress=False)  # a normal build
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
    audio_cache.AudioCache.open(drill["train_cache"], verify=True)
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


CSV = "clotho_captions_development.csv"
CLIPS = ["a.wav", "b.wav", "c.wav"]  # CSV lines 2, 3, 4


def _custom_set(root: Path) -> None:
    """A small, valid custom set in the ClothoV2 layout (development split only)."""
    import numpy as np
    import soundfile as sf

    (root / "development").mkdir(parents=True)
    for k, name in enumerate(CLIPS):
        sf.write(root / "development" / name, 0.1 * np.sin(np.arange(8000) * (k + 1) / 20), 16000)
    header = "file_name," + ",".join(f"caption_{k}" for k in range(1, 6))
    rows = [f"{name}," + ",".join(f"sound {name[0]} number {k}" for k in range(1, 6)) for name in CLIPS]
    (root / CSV).write_text("\n".join([header, *rows]) + "\n")


def _break(root: Path, case: str, clip_name: str = "b.wav") -> None:
    """Damage one clip (b.wav: CSV line 3) or the CSV, one bad-input class of the data issue each."""
    import numpy as np
    import soundfile as sf

    clip, csv_path = root / "development" / clip_name, root / CSV
    if case == "truncated audio":
        clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    elif case == "corrupt audio":
        clip.write_bytes(clip.read_bytes()[:44] + bytes(range(256)) * 8)
    elif case == "empty file":
        clip.write_bytes(b"")
    elif case == "zero-length audio":
        sf.write(clip, np.zeros(0, dtype=np.float32), 16000)
    elif case == "not audio":
        clip.write_text("this is a text file with a .wav name\n" * 20)
    elif case == "missing file":
        clip.unlink()
    elif case == "missing column":
        lines = csv_path.read_text().splitlines()
        csv_path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    elif case == "empty caption":
        csv_path.write_text(csv_path.read_text().replace("sound b number 3", "  "))
    elif case == "not UTF-8":
        csv_path.write_bytes(csv_path.read_bytes().replace(b"sound b number 3", "caf\u00e9 b".encode("latin-1")))
    else:
        raise ValueError(case)


AUDIO_CASES = ["truncated audio", "corrupt audio", "empty file", "zero-length audio", "not audio", "missing file"]
# what the message must name besides the CSV file: the row, and the field or value at fault
CSV_CASES = {"missing column": ["caption_5"], "empty caption": ["line 3", "caption_3"],
             "not UTF-8": ["line 3", "UTF-8"]}


def _prepare(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(tmp_path / "home", "salsa_lib.data_sources", "--data-root", str(tmp_path / "mine"),
                "--splits", "train", *extra)


def _cache_files(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (home / "data" / "cache").rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", AUDIO_CASES + list(CSV_CASES))
def test_bad_data_through_the_data_command_fails_cleanly_and_keeps_the_cache(tmp_path, case):
    _custom_set(tmp_path / "mine")
    good = _prepare(tmp_path)
    assert good.returncode == 0, good.stderr
    assert "development" in good.stdout and " 3 " in good.stdout  # the statistics table: 3 clips
    cached = _cache_files(tmp_path / "home")
    assert cached

    _break(tmp_path / "mine", case)
    result = _prepare(tmp_path)
    needles = CSV_CASES.get(case, ["line 3", "b.wav"])
    _assert_clean_failure(result, "error:", CSV, *needles)
    assert _cache_files(tmp_path / "home") == cached  # the good cache is untouched


def test_skip_bad_clips_through_the_data_command_reports_each_one(tmp_path):
    """Every audio class at once (one per clip), skipped and listed with its CSV line."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    root = tmp_path / "mine"
    _custom_set(root)
    names = [f"bad{k}.wav" for k in range(len(AUDIO_CASES))]
    with open(root / CSV, "a") as f:
        for name in names:
            sf.write(root / "development" / name, np.full(8000, 0.1), 16000)
            f.write(name + "," + ",".join(f"bad clip {name} {k}" for k in range(1, 6)) + "\n")
    for name, case in zip(names, AUDIO_CASES):
        _break(root, case, name)

    strict = _prepare(tmp_path)
    _assert_clean_failure(strict, "error:", CSV, "line 10", "bad5.wav")  # missing files are checked first
    tolerant = _prepare(tmp_path, "--skip-bad-clips")
    assert tolerant.returncode == 0, tolerant.stderr
    assert "Traceback" not in tolerant.stderr and f"skipped {len(names)} clip(s)" in tolerant.stderr
    for line, name in enumerate(names, start=5):
        assert f"line {line}: {name}:" in tolerant.stderr
    report = next((tmp_path / "home" / "data" / "cache").glob("custom-*/development_skipped.csv"))
    frame = pd.read_csv(report)
    assert list(frame.file_name) == names and list(frame.csv_row) == list(range(5, 5 + len(names)))
    assert frame.reason.str.len().min() > 0


def test_bad_custom_data_through_run_all(tmp_path):
    """The same class of error through ./run_all.sh: the runner names the notebook and the message."""
    root = tmp_path / "mine"
    _custom_set(root)
    for split in ("validation", "evaluation"):  # the notebook loads every split
        (root / split).mkdir()
        for name in CLIPS:
            (root / split / name).write_bytes((root / "development" / name).read_bytes())
        (root / f"clotho_captions_{split}.csv").write_text((root / CSV).read_text())
    _break(root, "not audio")
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--only", "00", "--quiet", "-p", "dataset", "custom",
                             "-p", "data_root", str(root)], cwd=REPO, env=_env(tmp_path / "home"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "00_data" in output and "b.wav" in output and "line 3" in output and CSV in output
    assert (tmp_path / "home" / "results" / "tiny" / "notebooks" / "00_data.failed.ipynb").exists()
    assert not (tmp_path / "home" / "results" / "tiny" / "data" / "data_config.json").exists()


# --------------------------------------------------------------------------- drill 5: demo input, search CLI

def _search_checkpoint(path: Path) -> None:
    """A tiny untrained model saved the way training saves it (parameters + state_dict)."""
    from salsa_lib.core.model import build_dual_encoder

    config = Stage1Config(profile="test", **TINY_MODEL)
    torch.manual_seed(0)
    model = build_dual_encoder(config)
    torch.save({"hyper_parameters": {"params": config.to_params()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)


def test_bad_demo_input_through_the_search_command(tmp_path):
    import numpy as np
    import soundfile as sf

    checkpoint, sounds = tmp_path / "model.ckpt", tmp_path / "sounds"
    _search_checkpoint(checkpoint)
    sounds.mkdir()
    for k in range(3):
        sf.write(sounds / f"tone{k}.wav", 0.1 * np.sin(np.arange(16000) * (k + 1) / 10), 16000)
    (sounds / "notes.wav").write_text("not audio at all\n" * 10)
    (sounds / "empty.flac").write_bytes(b"")

    def search(query: str, folder: Path = sounds) -> subprocess.CompletedProcess:
        return _cli(tmp_path, "salsa_lib.search", query, "--model", str(checkpoint), "--audio-dir", str(folder),
                    "--json")

    long_query = "a dog barks loudly while rain falls " * 12 + "犬が吠える 🐶 собака лает"
    first = search(long_query)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    report = json.loads(first.stdout)
    assert len(report["results"]) == 3 and {r["path"] for r in report["results"]} == {f"tone{k}.wav" for k in range(3)}
    assert sorted(s["path"] for s in report["skipped"]) == ["empty.flac", "notes.wav"]
    assert any("tokens" in note for note in report["notes"])  # the long query was cut, and said so
    cache = sounds / ".salsa_index" / f"{report['model_id']}.npz"
    good_cache = cache.read_bytes()

    emoji = search("🔥🌧️")  # nothing the tokenizer calls a word, but not empty: searched
    assert emoji.returncode == 0, emoji.stderr
    assert cache.read_bytes() == good_cache  # nothing changed: the cache is reused as is

    empty_query = _cli(tmp_path, "salsa_lib.search", " \t ", "--model", str(checkpoint), "--audio-dir", str(sounds))
    _assert_clean_failure(empty_query, "error:", "empty query")
    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir()
    _assert_clean_failure(search("rain", empty_folder), "error:", "no audio files")
    assert cache.read_bytes() == good_cache

    cache.write_bytes(b"damaged")  # a broken index is rebuilt, with a note, not a crash
    rebuilt = search("rain")
    assert rebuilt.returncode == 0 and any("unreadable" in n for n in json.loads(rebuilt.stdout)["notes"])
    assert len(json.loads(rebuilt.stdout)["results"]) == 3
