"""Captions CSV validation, split loading and the torch datasets (salsa_lib.data.splits), and notebook 00's data sources."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

import salsa_lib.data.audio as audio
from salsa_lib.core.captions import preprocess_caption
from salsa_lib.data.audio import SAMPLE_RATE, load_audio
from salsa_lib.data.splits import (CAPTION_COLUMNS, AudioCaptionDataset, ClipDataset, ClothoSplit, load_split,
                                   read_captions_csv)
from salsa_lib.errors import DataError

HEADER = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
# name, seconds, rate, channels
CLIPS = [("a.wav", 1.0, 44100, 2), ("b.flac", 0.5, 22050, 1), ("c.ogg", 1.5, 44100, 2), ("d.wav", 0.75, 32000, 1)]


def write_noise(path: Path, seconds: float, rate: int, channels: int, seed: int) -> None:
    """Noise, so that any crop of the decoded clip can be located in it unambiguously."""
    data = 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))
    sf.write(path, data.astype(np.float32), rate)


def captions_for(name: str) -> list[str]:
    return [f"Caption {k} of {name}: a DOG barks, loudly!" for k in range(1, 6)]


def csv_line(name: str, captions: list[str]) -> str:
    return ",".join([name] + [f'"{c}"' for c in captions]) + "\n"


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "clotho"
    (root / "development").mkdir(parents=True)
    for seed, (name, seconds, rate, channels) in enumerate(CLIPS):
        write_noise(root / "development" / name, seconds, rate, channels, seed)
    text = HEADER + "".join(csv_line(name, captions_for(name)) for name, *_ in CLIPS)
    (root / "clotho_captions_development.csv").write_text(text, encoding="utf-8")
    return root


def write_csv(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# --- captions -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, clean",
    [
        ("A dog barks, loudly!", "a dog barks loudly"),
        ("  Rain   falls\ton a tin-roof.  ", "  rain   falls\ton a tinroof  "),
        # whitespace is kept exactly as the original kept it (RoBERTa's tokenizer sees it)
        ("A dog  barks.", "a dog  barks"),
        ("A dog barks ", "a dog barks "),
        ("dog,cat - bird", "dogcat  bird"),
        ("The man's \"voice\" (echoing)...", "the mans voice echoing"),
        ("Café NOISE; 100% loud?", "café noise 100 loud"),
    ],
)
def test_preprocess_caption(raw, clean):
    assert preprocess_caption(raw) == clean


def test_read_captions_csv_returns_columns_and_lines(tmp_path):
    text = HEADER + csv_line("x.wav", ["one", "two", "three", "four", "five"])
    text += 'y.wav,"multi\nline",b,c,d,e\n\n' + csv_line("z.wav", list("vwxyz"))
    frame = read_captions_csv(write_csv(tmp_path / "c.csv", "\ufeff" + text))  # BOM tolerated
    assert list(frame.columns) == ["file_name", *CAPTION_COLUMNS, "csv_row"]
    assert frame["file_name"].tolist() == ["x.wav", "y.wav", "z.wav"]
    assert frame["csv_row"].tolist() == [2, 3, 6]  # the multi-line caption and blank line count
    assert frame.loc[1, "caption_1"] == "multi\nline"
    assert frame.loc[0, "caption_5"] == "five"


def assert_data_error(path: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        read_captions_csv(path)
    message = str(info.value)
    for fragment in (path.name, *fragments):
        assert fragment in message, (fragment, message)
    return message


def test_read_captions_csv_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope.csv", "not found")


def test_read_captions_csv_missing_columns(tmp_path):
    path = write_csv(tmp_path / "c.csv", "file_name,caption_1,caption_2\nx.wav,a,b\n")
    assert_data_error(path, "missing column", "caption_3", "caption_4", "caption_5")


@pytest.mark.parametrize(
    "caption, fragment",
    [("", "empty caption"), ("   ", "empty caption"), ("?!...", "empty after removing punctuation")],
)
def test_read_captions_csv_empty_captions(tmp_path, caption, fragment):
    text = HEADER + csv_line("x.wav", list("abcde")) + csv_line("y.wav", ["a", "b", caption, "d", "e"])
    message = assert_data_error(write_csv(tmp_path / "c.csv", text), fragment, "line 3", "caption_3", "y.wav")
    assert "line 2" not in message


def test_read_captions_csv_not_utf8(tmp_path):
    text = (HEADER + csv_line("x.wav", list("abcde"))).encode() + "y.wav,caf\xe9,b,c,d,e\n".encode("latin-1")
    offset = text.index(b"\xe9")
    assert_data_error(write_csv(tmp_path / "c.csv", text), "UTF-8", f"byte offset {offset}", "line 3")


def test_read_captions_csv_duplicate_and_empty_file_name(tmp_path):
    text = HEADER + csv_line("x.wav", list("abcde")) + csv_line("y.wav", list("abcde")) + csv_line("x.wav", list("fghij"))
    assert_data_error(write_csv(tmp_path / "dup.csv", text), "duplicate", "x.wav", "line 4", "line 2")
    text = HEADER + csv_line("x.wav", list("abcde")) + csv_line(" ", list("abcde"))
    assert_data_error(write_csv(tmp_path / "empty.csv", text), "empty file name", "line 3", "file_name")


def test_read_captions_csv_wrong_field_count_and_empty_file(tmp_path):
    text = HEADER + "x.wav,a,b,c\n"
    assert_data_error(write_csv(tmp_path / "short.csv", text), "line 2", "4 fields")
    assert_data_error(write_csv(tmp_path / "blank.csv", ""), "empty file")


# --- load_split ---------------------------------------------------------------------------------

def test_load_split(root, tmp_path):
    split = load_split(root, "development", cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(split, ClothoSplit)
    assert split.file_names == [c[0] for c in CLIPS] and split.n_clips == 4 and split.n_captions == 20
    assert split.captions[2] == captions_for("c.ogg")
    assert split.caption(7) == captions_for("b.flac")[2]
    np.testing.assert_allclose(split.durations(), [c[1] for c in CLIPS], atol=1 / SAMPLE_RATE)
    assert (tmp_path / "cache" / "development_32000" / "index.json").is_file()
    assert split.skipped.empty and not (tmp_path / "cache" / "development_skipped.csv").exists()
    np.testing.assert_allclose(split.audio[1], load_audio(root / "development" / "b.flac"), atol=1e-4)


def test_load_split_reuses_cache(root, tmp_path, monkeypatch):
    first = load_split(root, "development", cache_dir=tmp_path / "cache", progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(audio, "load_audio", fail)
    second = load_split(root, "development", cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(second.audio[2], first.audio[2])


def test_load_split_any_split_name(root, tmp_path):
    (root / "development").rename(root / "my_clips")
    (root / "clotho_captions_development.csv").rename(root / "clotho_captions_my_clips.csv")
    split = load_split(root, "my_clips", cache_dir=tmp_path / "cache", sample_rate=16000, progress=False)
    assert split.n_clips == 4 and split.audio.sample_rate == 16000
    assert (tmp_path / "cache" / "my_clips_16000").is_dir()


def test_load_split_missing_audio_names_file_and_row(root, tmp_path):
    (root / "development" / "c.ogg").unlink()
    with pytest.raises(DataError) as info:
        load_split(root, "development", cache_dir=tmp_path / "cache", progress=False)
    assert "c.ogg" in str(info.value) and "line 4" in str(info.value) and "missing" in str(info.value)


def test_load_split_bad_clip_names_file_and_row(root, tmp_path):
    (root / "development" / "b.flac").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_split(root, "development", cache_dir=tmp_path / "cache", progress=False)
    assert "b.flac" in str(info.value) and "line 3" in str(info.value) and "empty" in str(info.value)


def test_load_split_skip_bad_clips_reports_and_drops(root, tmp_path):
    (root / "development" / "a.wav").unlink()
    (root / "development" / "c.ogg").write_text("not audio")
    split = load_split(root, "development", cache_dir=tmp_path / "cache", skip_bad_clips=True, progress=False)
    assert split.file_names == ["b.flac", "d.wav"] and len(split.audio) == 2
    assert split.captions == [captions_for("b.flac"), captions_for("d.wav")]
    np.testing.assert_allclose(split.audio[1], load_audio(root / "development" / "d.wav"), atol=1e-4)
    report = pd.read_csv(tmp_path / "cache" / "development_skipped.csv")
    assert list(report.columns) == ["file_name", "csv_row", "reason"]
    assert report["file_name"].tolist() == ["a.wav", "c.ogg"] and report["csv_row"].tolist() == [2, 4]
    assert "missing" in report["reason"][0] and "not an audio file" in report["reason"][1]
    assert split.skipped["file_name"].tolist() == ["a.wav", "c.ogg"]


# --- datasets -----------------------------------------------------------------------------------

@pytest.fixture
def split(root, tmp_path) -> ClothoSplit:
    return load_split(root, "development", cache_dir=tmp_path / "cache", progress=False)


def locate(crop: np.ndarray, clip: np.ndarray) -> int:
    """Start of ``crop`` inside ``clip`` (noise makes the match unique); fails if it is not a sub-array."""
    for start in np.flatnonzero(clip == crop[0]):
        if np.array_equal(clip[start : start + len(crop)], crop):
            return int(start)
    raise AssertionError("crop is not a contiguous part of the clip")


def test_audio_caption_dataset_indexing(split):
    data = AudioCaptionDataset(split, seconds=0.8, train=False)
    assert len(data) == 20
    for i in range(20):
        item = data[i]
        assert item["idx"] == i and item["audio_idx"] == i // 5
        assert item["caption"] == preprocess_caption(split.captions[i // 5][i % 5])
        assert item["audio"].dtype == torch.float32 and item["audio"].shape == (int(0.8 * SAMPLE_RATE),)
    assert data[5]["caption"] == "caption 1 of bflac a dog barks loudly"
    with pytest.raises(IndexError):
        data[20]


def test_audio_lengths_and_eval_crop(split):
    data = AudioCaptionDataset(split, seconds=0.8, train=False)
    n = int(0.8 * SAMPLE_RATE)
    short = data[5]  # b.flac, 0.5 s: padded
    assert short["audio_length"] == pytest.approx(0.5 / 0.8, abs=1e-4)
    np.testing.assert_array_equal(short["audio"][: len(split.audio[1])].numpy(), split.audio[1])
    assert not short["audio"][len(split.audio[1]) :].any()
    long = data[10]  # c.ogg, 1.5 s: the evaluation crop is the start, every time
    assert long["audio_length"] == 1.0
    np.testing.assert_array_equal(long["audio"].numpy(), split.audio[2][:n])
    np.testing.assert_array_equal(data[11]["audio"], long["audio"])


def test_train_crops_random_in_bounds_reproducible_and_epoch_aware(split):
    clip = split.audio[2]
    data = AudioCaptionDataset(split, seconds=0.5, train=True, seed=3)
    starts = {locate(data[i]["audio"].numpy(), clip) for i in range(10, 15)}
    assert len(starts) > 1 and all(0 <= s <= len(clip) - 16000 for s in starts)
    same = AudioCaptionDataset(split, seconds=0.5, train=True, seed=3)
    np.testing.assert_array_equal(same[12]["audio"], data[12]["audio"])
    other_seed = AudioCaptionDataset(split, seconds=0.5, train=True, seed=4)
    epoch0 = [locate(data[i]["audio"].numpy(), clip) for i in range(10, 15)]
    assert epoch0 != [locate(other_seed[i]["audio"].numpy(), clip) for i in range(10, 15)]
    data.set_epoch(1)
    epoch1 = [locate(data[i]["audio"].numpy(), clip) for i in range(10, 15)]
    assert epoch1 != epoch0
    data.set_epoch(0)
    assert [locate(data[i]["audio"].numpy(), clip) for i in range(10, 15)] == epoch0


def test_dataset_pickles_and_works_in_workers(split):
    data = AudioCaptionDataset(split, seconds=0.5, train=True, seed=1)
    data.set_epoch(2)
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[13]["audio"], data[13]["audio"])
    loader = DataLoader(data, batch_size=5, num_workers=2, shuffle=False)
    batches = list(loader)
    assert torch.equal(torch.cat([b["audio_idx"] for b in batches]), torch.arange(20) // 5)
    np.testing.assert_array_equal(batches[2]["audio"][3].numpy(), data[13]["audio"].numpy())
    assert batches[0]["caption"][0] == data[0]["caption"]


def test_clip_dataset(split):
    clips = ClipDataset(split, seconds=1.0)
    assert len(clips) == 4
    item = clips[1]
    assert set(item) == {"audio", "audio_length", "audio_idx"}
    assert item["audio_idx"] == 1 and item["audio_length"] == pytest.approx(0.5)
    np.testing.assert_array_equal(clips[2]["audio"].numpy(), split.audio[2][:SAMPLE_RATE])
    assert pickle.loads(pickle.dumps(clips))[3]["audio"].shape == (SAMPLE_RATE,)
