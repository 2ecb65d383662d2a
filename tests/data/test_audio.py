"""Decoding, crop/pad and the decoded-audio cache (salsa_lib.data.audio)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import salsa_lib.data.audio as audio
import salsa_lib.data.audio_cache as audio_cache
from salsa_lib.data.audio import SAMPLE_RATE, crop_or_pad, load_audio
from salsa_lib.data.audio_cache import AudioCache, build_audio_cache
from salsa_lib.errors import DataError

QUANT = 0.5 / 32767 + 1e-6  # int16 rounding error, plus float32 slack


def write_clip(path: Path, seconds: float, rate: int, channels: int = 1, freq: float = 440.0, seed: int = 0) -> Path:
    """A tone plus a little noise (so crops are identifiable), written in the format of the suffix."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    mono = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    sf.write(path, data.astype(np.float32), rate)
    return path


@pytest.fixture
def clips(tmp_path) -> list[Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    return [
        write_clip(folder / "a.wav", 1.0, 44100, channels=2, seed=1),
        write_clip(folder / "b.flac", 0.5, 22050, channels=1, seed=2),
        write_clip(folder / "c.ogg", 1.5, 44100, channels=2, seed=3),
        write_clip(folder / "d.wav", 0.75, 32000, channels=1, seed=4),
    ]


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


# --- load_audio ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, seconds, rate, channels",
    [("x.wav", 1.0, 44100, 2), ("x.flac", 0.5, 22050, 1), ("x.ogg", 1.5, 44100, 2), ("x.mp3", 1.0, 48000, 1)],
)
def test_load_audio_resamples_to_32k_mono(tmp_path, name, seconds, rate, channels):
    path = write_clip(tmp_path / name, seconds, rate, channels)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    if name.endswith(".mp3"):  # mp3 frames add encoder delay/padding: only roughly equal
        assert abs(len(wave) - seconds * SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    else:
        assert abs(len(wave) - seconds * SAMPLE_RATE) <= 1
    assert dominant_frequency(wave, SAMPLE_RATE) == pytest.approx(440.0, abs=3.0)


def test_load_audio_averages_channels(tmp_path):
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    sf.write(tmp_path / "opposite.wav", np.stack([tone, -tone], axis=1), 16000)
    sf.write(tmp_path / "left.wav", np.stack([tone, np.zeros_like(tone)], axis=1), 16000)
    assert np.abs(load_audio(tmp_path / "opposite.wav")).max() < 1e-3
    left = load_audio(tmp_path / "left.wav", sample_rate=16000)
    np.testing.assert_allclose(left, tone / 2, atol=1e-4)


def test_load_audio_other_sample_rate(tmp_path):
    path = write_clip(tmp_path / "x.wav", 1.0, 44100)
    assert len(load_audio(path, sample_rate=16000)) == 16000


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    good = write_clip(folder / "good.wav", 1.0, 44100, channels=2)
    raw = good.read_bytes()
    cases = {}
    (folder / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    cases["truncated wav"] = (folder / "truncated.wav", "truncated")
    (folder / "header_only.wav").write_bytes(raw[:30])
    cases["truncated header"] = (folder / "header_only.wav", "truncated")
    flac = write_clip(folder / "tmp.flac", 1.0, 44100).read_bytes()
    (folder / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    cases["truncated flac"] = (folder / "truncated.flac", "corrupt")
    ogg = write_clip(folder / "tmp.ogg", 1.0, 44100).read_bytes()
    (folder / "truncated.ogg").write_bytes(ogg[: len(ogg) // 2])
    cases["truncated ogg"] = (folder / "truncated.ogg", "truncated")
    (folder / "empty.wav").write_bytes(b"")
    cases["0-byte file"] = (folder / "empty.wav", "empty file")
    sf.write(folder / "zero.wav", np.zeros((0, 2), np.float32), 44100)
    cases["zero-length audio"] = (folder / "zero.wav", "zero-length")
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    cases["text named .wav"] = (folder / "text.wav", "not an audio file")
    for rate in (32000, 44100):  # with and without resampling
        nan = np.zeros(rate, np.float32)
        nan[100] = np.nan
        sf.write(folder / f"nan{rate}.wav", nan, rate, subtype="FLOAT")
        cases[f"NaN at {rate}"] = (folder / f"nan{rate}.wav", "non-finite")
    cases["missing file"] = (folder / "missing.wav", "missing")
    (folder / "folder.wav").mkdir()
    cases["directory"] = (folder / "folder.wav", "not a regular file")
    return cases


def test_load_audio_bad_inputs_name_file_and_reason(tmp_path):
    for case, (path, reason) in _bad_files(tmp_path).items():
        with pytest.raises(DataError) as info:
            load_audio(path)
        assert path.name in str(info.value), case
        assert reason in str(info.value), (case, str(info.value))
        assert info.value.reason and info.value.path == path


# --- crop_or_pad --------------------------------------------------------------------------------

def test_crop_or_pad_pads_at_end_with_fraction():
    wave = np.arange(1, 7, dtype=np.float32)
    out, fraction = crop_or_pad(wave, 8)
    assert out.dtype == np.float32 and len(out) == 8
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 6, 0, 0])
    assert fraction == pytest.approx(0.75)
    same, fraction = crop_or_pad(wave, 6)
    np.testing.assert_array_equal(same, wave)
    assert fraction == 1.0


def test_crop_or_pad_eval_takes_start():
    wave = np.arange(100, dtype=np.float32)
    out, fraction = crop_or_pad(wave, 10)
    np.testing.assert_array_equal(out, np.arange(10))
    assert fraction == 1.0


def test_crop_or_pad_train_random_crop_in_bounds_and_reproducible():
    wave = np.arange(100, dtype=np.float32)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        out, fraction = crop_or_pad(wave, 10, rng)
        start = int(out[0])
        np.testing.assert_array_equal(out, np.arange(start, start + 10))  # contiguous, inside the clip
        starts.add(start)
        assert fraction == 1.0
    assert min(starts) == 0 and max(starts) == 90  # both ends reachable
    assert len(starts) > 50
    first = [crop_or_pad(wave, 10, np.random.default_rng(7))[0][0] for _ in range(2)]
    assert first[0] == first[1]


def test_crop_or_pad_rejects_nonpositive_length():
    with pytest.raises(ValueError):
        crop_or_pad(np.zeros(5), 0)


# --- cache --------------------------------------------------------------------------------------

def build(clips, cache_path, **kwargs):
    return build_audio_cache(clips, cache_path, progress=False, **kwargs)


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused, not rebuilt")

    monkeypatch.setattr(audio, "load_audio", fail)


def count_decoding(monkeypatch) -> list[Path]:
    calls, real = [], audio.load_audio

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(audio, "load_audio", counting)
    return calls


def test_cache_round_trip(clips, tmp_path):
    cache = build(clips, tmp_path / "cache")
    assert len(cache) == 4 and cache.names == [c.name for c in clips]
    assert cache.sample_rate == SAMPLE_RATE and cache.skipped == []
    for i, clip in enumerate(clips):
        expected = load_audio(clip)
        assert cache.lengths[i] == len(expected)
        assert cache[i].dtype == np.float32
        np.testing.assert_allclose(cache[i], expected, atol=QUANT)
        np.testing.assert_array_equal(cache.get(clip.name), cache[i])
    np.testing.assert_array_equal(cache[-1], cache[3])
    with pytest.raises(IndexError):
        cache[4]
    with pytest.raises(KeyError):
        cache.get("nope.wav")
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    array = tmp_path / "cache" / index["array_file"]
    assert array.stat().st_size == 2 * sum(index["lengths"])
    assert np.memmap(array, dtype="<i2", mode="r").size == sum(index["lengths"])
    assert {s["name"] for s in index["sources"]} == {c.name for c in clips}


def test_cache_names_override_and_duplicates(clips, tmp_path):
    cache = build(clips, tmp_path / "cache", names=["w", "x", "y", "z"])
    assert cache.names == ["w", "x", "y", "z"]
    with pytest.raises(DataError, match="twice"):
        build(clips, tmp_path / "other", names=["w", "w", "y", "z"])


def test_cache_open_and_pickle_are_light(clips, tmp_path):
    build(clips, tmp_path / "cache")
    cache = AudioCache.open(tmp_path / "cache")
    first = cache[2]
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000  # the memory map is not copied into the pickle
    np.testing.assert_array_equal(pickle.loads(blob)[2], first)


def test_second_build_reuses_without_decoding(clips, tmp_path, monkeypatch):
    built = build(clips, tmp_path / "cache")
    forbid_decoding(monkeypatch)
    again = build(clips, tmp_path / "cache")
    assert again.names == built.names
    np.testing.assert_array_equal(again[0], built[0])


def test_touching_a_source_rebuilds(clips, tmp_path, monkeypatch):
    build(clips, tmp_path / "cache")
    stat = clips[1].stat()
    os.utime(clips[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    calls = count_decoding(monkeypatch)
    build(clips, tmp_path / "cache")
    assert len(calls) == 4


def test_replacing_a_source_rebuilds_with_new_audio(clips, tmp_path):
    old = build(clips, tmp_path / "cache")[0]
    write_clip(clips[0], 0.6, 44100, channels=2, freq=1000.0, seed=9)
    new = build(clips, tmp_path / "cache")
    assert abs(len(new[0]) - 0.6 * SAMPLE_RATE) <= 1 and len(old) != len(new[0])
    assert dominant_frequency(new[0], SAMPLE_RATE) == pytest.approx(1000.0, abs=3.0)
    assert len(list((tmp_path / "cache").glob("audio-*.int16"))) == 1  # the old array was removed


def test_changed_sample_rate_or_file_list_rebuilds(clips, tmp_path, monkeypatch):
    build(clips, tmp_path / "cache")
    calls = count_decoding(monkeypatch)
    assert build(clips, tmp_path / "cache", sample_rate=16000).sample_rate == 16000
    assert len(build(clips[:3], tmp_path / "cache")) == 3
    assert len(calls) == 7


def _array_path(cache_dir: Path) -> Path:
    return cache_dir / json.loads((cache_dir / "index.json").read_text())["array_file"]


def test_truncated_array_is_detected_and_rebuilt(clips, tmp_path, monkeypatch):
    good = build(clips, tmp_path / "cache")[3]
    array = _array_path(tmp_path / "cache")
    with open(array, "r+b") as handle:
        handle.truncate(array.stat().st_size - 10)
    with pytest.raises(DataError, match="bytes"):
        AudioCache.open(tmp_path / "cache", verify=False)
    calls = count_decoding(monkeypatch)
    rebuilt = build(clips, tmp_path / "cache")
    assert len(calls) == 4
    np.testing.assert_array_equal(rebuilt[3], good)


def test_flipped_bytes_are_detected_and_rebuilt(clips, tmp_path, monkeypatch):
    good = build(clips, tmp_path / "cache")[1]
    array = _array_path(tmp_path / "cache")
    data = bytearray(array.read_bytes())
    data[len(data) // 3] ^= 0xFF
    array.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        AudioCache.open(tmp_path / "cache")
    assert len(AudioCache.open(tmp_path / "cache", verify=False)) == 4  # verify=False skips the hash
    calls = count_decoding(monkeypatch)
    rebuilt = build(clips, tmp_path / "cache")
    assert len(calls) == 4
    np.testing.assert_array_equal(rebuilt[1], good)
    AudioCache.open(tmp_path / "cache")


def test_unreadable_index_is_rebuilt(clips, tmp_path):
    build(clips, tmp_path / "cache")
    index_path = tmp_path / "cache" / "index.json"
    good = json.loads(index_path.read_text())
    for broken in ("{not json", "[1, 2]", json.dumps({"format_version": 1}),
                   json.dumps({**good, "lengths": ["x"] * 4}), json.dumps({**good, "offsets": None})):
        index_path.write_text(broken)
        with pytest.raises(DataError, match="index"):
            AudioCache.open(tmp_path / "cache")
        assert len(build(clips, tmp_path / "cache")) == 4


def test_failed_rebuild_leaves_previous_cache_intact(clips, tmp_path):
    cache_dir = tmp_path / "cache"
    before = build(clips, cache_dir)
    expected = [before[i] for i in range(4)]
    index_before = (cache_dir / "index.json").read_text()
    clips[2].write_text("now a text file")
    with pytest.raises(DataError) as info:
        build(clips, cache_dir)
    assert clips[2].name in str(info.value)
    assert (cache_dir / "index.json").read_text() == index_before
    reopened = AudioCache.open(cache_dir)  # verifies the checksum
    for i in range(4):
        np.testing.assert_array_equal(reopened[i], expected[i])
    np.testing.assert_array_equal(before[0], expected[0])  # an already open cache keeps working
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_crash_mid_build_leaves_previous_cache_intact(clips, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    expected = build(clips, cache_dir)[1]
    os.utime(clips[0], ns=(0, 10**18))
    real = audio.load_audio

    def crash_on_third(path, *args, **kwargs):
        if Path(path) == clips[2]:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(audio, "load_audio", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(clips, cache_dir)
    np.testing.assert_array_equal(AudioCache.open(cache_dir)[1], expected)
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_crash_while_writing_index_leaves_previous_cache_intact(clips, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    expected = build(clips, cache_dir)[2]
    os.utime(clips[3], ns=(0, 10**18))

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(audio_cache, "atomic_write_json", disk_full)
    with pytest.raises(OSError):
        build(clips, cache_dir)
    np.testing.assert_array_equal(AudioCache.open(cache_dir)[2], expected)  # old array still there


def test_skip_bad_records_and_leaves_out_bad_clips(clips, tmp_path):
    (clips[1].parent / "empty.wav").write_bytes(b"")
    files = [clips[0], clips[1].parent / "empty.wav", clips[2], clips[1].parent / "gone.wav"]
    cache = build(files, tmp_path / "cache", skip_bad=True)
    assert cache.names == ["a.wav", "c.ogg"]
    assert [name for name, _ in cache.skipped] == ["empty.wav", "gone.wav"]
    assert "empty" in cache.skipped[0][1] and "missing" in cache.skipped[1][1]
    np.testing.assert_allclose(cache.get("c.ogg"), load_audio(clips[2]), atol=QUANT)
    assert AudioCache.open(tmp_path / "cache").skipped == cache.skipped
    with pytest.raises(DataError, match="empty.wav"):  # reused, but the caller did not accept skipping
        build(files, tmp_path / "cache", skip_bad=False)


def test_all_clips_skipped_gives_empty_cache(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    cache = build([tmp_path / "empty.wav"], tmp_path / "cache", skip_bad=True)
    assert len(cache) == 0 and len(cache.skipped) == 1
    assert len(AudioCache.open(tmp_path / "cache")) == 0
