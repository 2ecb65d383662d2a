"""The synthetic benchmark: ClothoV2 layout, playable audio, reproducibility, an auditable truth matrix,
and generation that never leaves a half-written or destroyed data set behind."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import soundfile as sf

from salsa_lib.data import synth, synth_scenes, synth_sounds
from salsa_lib.errors import ConfigError, DataError

SMALL = {"development": 6, "validation": 3, "evaluation": 3}
CAPTION_COLUMNS = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
METADATA_COLUMNS = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"]


def _generate(root, **kwargs):
    kwargs = {"n_clips": SMALL, "clip_seconds": 2.0, "sample_rate": 22050, "seed": 0, "progress": False, **kwargs}
    return synth.generate_synthetic_clotho(root, **kwargs)


def _files(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "synthetic"
    summary = _generate(root)
    return root, summary


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    """60 short development clips: enough for shared captions and for every source to show up."""
    root = tmp_path_factory.mktemp("larger") / "synthetic"
    _generate(root, n_clips={"development": 60, "validation": 1, "evaluation": 1}, clip_seconds=0.5,
              sample_rate=16000, seed=3)
    return root


def _events(root, split):
    return json.loads((root / f"synthetic_events_{split}.json").read_text())


def test_layout_and_csv_columns(small):
    root, summary = small
    assert summary["reused"] is False and summary["counts"] == SMALL and summary["root"] == str(root)
    for split, count in SMALL.items():
        captions = pd.read_csv(root / f"clotho_captions_{split}.csv")
        metadata = pd.read_csv(root / f"clotho_metadata_{split}.csv")
        assert list(captions.columns) == CAPTION_COLUMNS and list(metadata.columns) == METADATA_COLUMNS
        assert len(captions) == len(metadata) == count
        assert list(metadata["file_name"]) == list(captions["file_name"])
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(captions["file_name"])
        clips = _events(root, split)["clips"]
        assert [c["file_name"] for c in clips] == list(captions["file_name"])
        assert list(metadata["keywords"]) == [";".join(e["source"] for e in c["events"]) for c in clips]
        assert (metadata["license"] == "CC0 (synthetic)").all() and metadata["sound_id"].is_unique
        for row, clip in zip(captions.itertuples(index=False), clips):
            texts = list(row[1:])
            assert texts == [c["text"] for c in clip["captions"]]
            assert len(set(texts)) == 5, "captions of one clip must differ"
            for text in texts:
                assert text[0].isupper() and text.endswith(".") and 4 <= len(text.split()) <= 20, text
    stamp = json.loads((root / "synthetic.json").read_text())
    assert stamp["n_clips"] == SMALL and stamp["sample_rate"] == 22050 and stamp["format_version"] >= 1
    assert not [p for p in root.parent.iterdir() if p.name != root.name], "temporary folders left behind"


def test_wavs_are_playable_mono_at_the_requested_rate(small):
    root, _ = small
    for split in SMALL:
        peaks = {c["file_name"]: c["peak"] for c in _events(root, split)["clips"]}
        for path in (root / split).iterdir():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (22050, 1, 44100, "PCM_16")
            audio, _ = sf.read(path)
            assert np.sqrt(np.mean(audio**2)) > 1e-3, f"{path} is silent"
            assert np.max(np.abs(audio)) < 0.95, f"{path} clips"
            assert np.max(np.abs(audio)) == pytest.approx(peaks[path.name], abs=1e-3)


def test_pitch_attribute_moves_the_spectrum():
    """A caption saying 'high-pitched' must be audibly true: the spectral centroid rises."""
    sr, t = 22050, np.arange(22050) / 22050

    def centroid(x):
        power = np.abs(np.fft.rfft(x)) ** 2
        return np.sum(np.fft.rfftfreq(len(x), 1 / sr) * power) / np.sum(power)

    tonal = [name for name in synth_scenes.SOURCES if "pitch" in synth_scenes.SOURCES[name][0]]
    assert len(tonal) >= 5
    for name in tonal:
        low, high = (synth_sounds.SYNTHESIZERS[name](np.random.default_rng(1), t, sr, {"pitch": p, "speed": "fast"})
                     for p in ("low", "high"))
        assert centroid(high) > 1.5 * centroid(low), name


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    kwargs = {"n_clips": {"development": 3, "validation": 1, "evaluation": 1}, "clip_seconds": 1.0}
    _generate(tmp_path / "a", **kwargs)
    _generate(tmp_path / "b", **kwargs)
    _generate(tmp_path / "c", seed=1, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys() and len(a) == 5 + 3 * 4 + 1  # WAVs, 4 files a split, stamp
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    wav, captions = "development/synthetic_development_0000.wav", "clotho_captions_development.csv"
    assert a[wav].read_bytes() != c[wav].read_bytes()
    assert a[captions].read_bytes() != c[captions].read_bytes()


def _brute_force_truth(clips):
    """Re-derive the truth from the audit JSON with plain loops, independently of the module."""
    def matches(event, claim):
        return event["source"] == claim["source"] and all(
            event["attributes"].get(k) == v for k, v in claim["attributes"].items())

    def relation(kind, a, b):
        if kind == "before":
            return a["offset_sample"] <= b["onset_sample"]
        assert kind == "while", kind
        return max(a["onset_sample"], b["onset_sample"]) < min(a["offset_sample"], b["offset_sample"])

    truth = np.zeros((len(clips), 5 * len(clips)), dtype=bool)
    captions = [cap for clip in clips for cap in clip["captions"]]
    for i, clip in enumerate(clips):
        events = clip["events"]
        for j, cap in enumerate(captions):
            ok = all(any(matches(e, claim) for e in events) for claim in cap["claims"])
            for rel in cap["relations"]:
                ok = ok and any(a is not b and matches(a, cap["claims"][rel["first"]])
                                and matches(b, cap["claims"][rel["second"]]) and relation(rel["type"], a, b)
                                for a in events for b in events)
            truth[i, j] = ok
    return truth


@pytest.mark.parametrize("which", ["small", "larger"])
def test_truth_matrix_agrees_with_a_brute_force_recheck(which, request):
    root = request.getfixturevalue(which)
    root = root[0] if isinstance(root, tuple) else root
    for split in synth.SPLITS:
        truth = synth.load_truth(root, split)
        clips = _events(root, split)["clips"]
        n = len(clips)
        assert sp.issparse(truth) and truth.format == "csr" and truth.shape == (n, 5 * n)
        dense = truth.toarray().astype(bool)
        assert all(dense[i, 5 * i:5 * i + 5].all() for i in range(n)), "a clip's own captions must match it"
        np.testing.assert_array_equal(dense, _brute_force_truth(clips))


def test_larger_split_has_shared_captions_all_sources_and_relations(larger):
    truth = synth.load_truth(larger, "development")
    stats = synth.truth_statistics(truth)
    per_caption = np.asarray(truth.sum(axis=0)).ravel()
    np.testing.assert_array_equal(stats["matches_per_caption"], per_caption)
    assert stats["n_clips"] == 60 and stats["n_captions"] == 300
    assert stats["max_matches"] > 1 and stats["min_matches"] >= 1
    assert 0 < stats["fraction_matching_one"] < 1
    assert stats["median_matches"] == np.median(per_caption) and stats["mean_captions_per_clip"] >= 5
    clips = _events(larger, "development")["clips"]
    sources = {e["source"] for c in clips for e in c["events"]}
    assert len(sources) >= 10, sorted(sources)
    kinds = {r["type"] for c in clips for cap in c["captions"] for r in cap["relations"]}
    assert kinds == {"before", "while"}
    for clip in clips:  # every claim is about an event that is in the clip, with the event's own values
        for cap in clip["captions"]:
            assert 1 <= len(cap["claims"]) <= 2
            for claim in cap["claims"]:
                event = next(e for e in clip["events"] if e["source"] == claim["source"])
                assert claim["attributes"].items() <= event["attributes"].items()
                assert set(event["attributes"]) == set(synth_scenes.attributes_of(claim["source"]))


def test_second_call_reuses_and_changed_parameters_regenerate(tmp_path):
    root = tmp_path / "synthetic"
    kwargs = {"n_clips": {"development": 2, "validation": 1, "evaluation": 1}, "clip_seconds": 1.0}
    assert _generate(root, **kwargs)["reused"] is False
    before = {name: path.stat().st_mtime_ns for name, path in _files(root).items()}
    again = _generate(root, **kwargs)
    assert again["reused"] is True and again["seconds"] < 1.0
    assert {name: path.stat().st_mtime_ns for name, path in _files(root).items()} == before
    wav = root / "development" / "synthetic_development_0000.wav"
    old_bytes = wav.read_bytes()
    assert _generate(root, seed=5, **kwargs)["reused"] is False
    assert wav.read_bytes() != old_bytes
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"], "temporary folders left behind"


def test_failed_generation_keeps_the_old_set_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    root = tmp_path / "synthetic"
    kwargs = {"n_clips": {"development": 3, "validation": 2, "evaluation": 2}, "clip_seconds": 1.0}
    _generate(root, **kwargs)
    before = {name: path.read_bytes() for name, path in _files(root).items()}
    calls = []

    def exploding(original):
        def wrapper(*args):
            calls.append(1)
            if len(calls) == 4:
                raise RuntimeError("synthesizer exploded")
            return original(*args)
        return wrapper

    for name, function in list(synth_sounds.SYNTHESIZERS.items()):
        monkeypatch.setitem(synth_sounds.SYNTHESIZERS, name, exploding(function))
    with pytest.raises(RuntimeError, match="synthesizer exploded"):
        _generate(root, seed=9, **kwargs)
    assert len(calls) == 4
    assert {name: path.read_bytes() for name, path in _files(root).items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_a_crash_on_a_fresh_root_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "truth_matrix", lambda clips: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path / "synthetic", n_clips={"development": 1, "validation": 1, "evaluation": 1},
                  clip_seconds=0.5)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_a_synthetic_set(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine"):
        _generate(root)
    assert (root / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, shown", [
    ({"n_clips": {"development": 0}}, "0"),
    ({"n_clips": {"development": 2.5}}, "2.5"),
    ({"n_clips": {"training": 3}}, "'training'"),
    ({"n_clips": [3, 1, 1]}, "[3, 1, 1]"),
    ({"clip_seconds": 0}, "0"),
    ({"clip_seconds": -1.5}, "-1.5"),
    ({"clip_seconds": float("nan")}, "nan"),
    ({"sample_rate": 8000}, "8000"),
    ({"seed": -1}, "-1"),
])
def test_bad_arguments_raise_config_error_naming_the_value(tmp_path, kwargs, shown):
    with pytest.raises(ConfigError, match=shown.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        synth.generate_synthetic_clotho(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_load_truth_errors_name_the_file(small, tmp_path):
    with pytest.raises(DataError, match="synthetic_truth_validation.npz"):
        synth.load_truth(tmp_path, "validation")
    with pytest.raises(ConfigError, match="'train'"):
        synth.load_truth(small[0], "train")
    copy = tmp_path / "copy"
    shutil.copytree(small[0], copy)
    captions = pd.read_csv(copy / "clotho_captions_development.csv")
    captions.iloc[:-1].to_csv(copy / "clotho_captions_development.csv", index=False)
    with pytest.raises(DataError, match=r"synthetic_truth_development\.npz.*5 rows"):
        synth.load_truth(copy, "development")
    os.remove(copy / "synthetic_truth_evaluation.npz")
    with pytest.raises(DataError, match="synthetic_truth_evaluation.npz"):
        synth.load_truth(copy, "evaluation")


def test_no_progress_bar_in_a_headless_kernel(tmp_path, monkeypatch, capsys):
    """The runner's kernels are headless: a bar there would be saved in the executed notebook as "0%"."""
    from salsa_lib import quiet

    monkeypatch.setenv(quiet.HEADLESS_VARIABLE, "1")
    _generate(tmp_path / "headless", progress=True)
    assert "synthetic clips" not in capsys.readouterr().err
    monkeypatch.setenv(quiet.HEADLESS_VARIABLE, "0")  # interactive use keeps its bar
    _generate(tmp_path / "watched", progress=True)
    assert "synthetic clips" in capsys.readouterr().err
