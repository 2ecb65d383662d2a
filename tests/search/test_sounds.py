"""Decoding by content: which formats a fresh install reads, true reasons for the rest, quiet decoders."""

import os

import numpy as np
import pytest
import soundfile as sf

from salsa_lib.data.audio import load_audio
from salsa_lib.search import sounds

SR = 32000
# (file name, soundfile format, subtype, sample rate): the README's format list comes from this table
FORMATS = [("tone.wav", "WAV", "PCM_16", 44100), ("tone.FLAC", "FLAC", None, 48000),
           ("tone.ogg", "OGG", "VORBIS", 22050), ("tone.oga", "OGG", "VORBIS", 32000),
           ("tone.opus", "OGG", "OPUS", 48000), ("tone.aiff", "AIFF", None, 16000),
           ("tone.mp3", "MP3", "MPEG_LAYER_III", 44100), ("tone.caf", "CAF", None, 32000),
           ("tone.w64", "W64", None, 32000), ("tone.au", "AU", None, 8000),
           ("recording.Audio", "WAV", "FLOAT", 32000), ("no_extension", "FLAC", None, 32000)]


def _tone(seconds, rate, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("name,fmt,subtype,rate", FORMATS)
def test_each_format_decodes_by_content_and_streams_like_load_audio(tmp_path, name, fmt, subtype, rate):
    path = tmp_path / name
    sf.write(path, _tone(2.3, rate), rate, format=fmt, subtype=subtype)
    info, reason, _ = sounds.probe(path)
    assert reason is None and info.samplerate == rate
    windows = list(sounds.stream_windows(path, window=SR, hop=SR // 2))
    assert [w[0] for w in windows[:3]] == [0, SR // 2, SR] and all(len(w[1]) == SR for w in windows)
    if not name.endswith((".mp3", ".opus")):  # codecs whose padding changes the length a little
        assert windows[-1][0] + windows[-1][2] * SR == pytest.approx(2.3 * SR, abs=2)
    if path.suffix.lower() in (".wav", ".flac", ".ogg", ".aiff", ".mp3"):  # librosa decodes it too: same signal
        whole = load_audio(path)
        streamed = np.concatenate([w[1][: SR // 2] for w in windows])[: len(whole) - SR]
        np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=2e-3)


def test_long_file_streams_in_windows_with_a_padded_tail(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, _tone(3.7, 16000), 16000)
    windows = list(sounds.stream_windows(path, window=SR, hop=SR))
    assert [w[0] for w in windows] == [0, SR, 2 * SR, 3 * SR]
    assert [w[2] for w in windows[:3]] == [1.0] * 3 and windows[3][2] == pytest.approx(0.7, abs=1e-3)
    assert not windows[3][1][int(0.71 * SR):].any()  # zero padding after the audio


def test_undecodable_files_get_true_reasons_and_decoders_stay_quiet(tmp_path, capfd):
    sf.write(tmp_path / "good.mp3", _tone(1.0, SR), SR)
    sf.write(tmp_path / "good.wav", _tone(1.0, SR), SR)
    good_mp3 = (tmp_path / "good.mp3").read_bytes()
    cases = {"corrupt.mp3": good_mp3[:300] + bytes(range(256)) * 20,
             "cut.wav": (tmp_path / "good.wav").read_bytes()[:3000],
             "song.m4a": b"\x00\x00\x00\x20ftypM4A " + bytes(500),
             "text.wav": b"this is not audio at all\n" * 10,
             "notes.txt": b"just notes\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: sounds.probe(tmp_path / name) for name in cases}
    if reasons["corrupt.mp3"][1] is None:  # libsndfile may accept the header: the stream then fails
        with pytest.raises(Exception, match="truncated or corrupt"):
            list(sounds.stream_windows(tmp_path / "corrupt.mp3", SR, SR))
    else:
        assert reasons["corrupt.mp3"][1].startswith("truncated or corrupt") and "does not exist" not in \
            reasons["corrupt.mp3"][1]
    assert reasons["cut.wav"][1].startswith("truncated or corrupt")
    assert reasons["song.m4a"][1].startswith("unsupported codec: MPEG-4")
    assert reasons["text.wav"][1].startswith("not audio") and reasons["text.wav"][2]  # an audio name: listed
    assert reasons["notes.txt"][1].startswith("not audio") and not reasons["notes.txt"][2]  # merely counted
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no mpg123 / libsndfile lines on the terminal


def test_listing_skips_hidden_names_and_notes_link_loops_and_empty_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden.wav").write_bytes(b"x")
    (tmp_path / "sub" / "a.wav").write_bytes(b"x")
    (tmp_path / "sub" / "back").symlink_to(tmp_path)  # a folder loop
    os.symlink("loop2.wav", tmp_path / "loop1.wav")
    os.symlink("loop1.wav", tmp_path / "loop2.wav")
    (tmp_path / "empty.flac").touch()
    (tmp_path / "empty.txt").touch()
    listing = sounds.list_files(tmp_path)
    assert [f[0] for f in listing.files] == ["sub/a.wav"]
    problems = dict(listing.problems)
    assert problems["loop1.wav"] == problems["loop2.wav"] == "symbolic link loop"
    assert "symbolic link loop" in problems["sub/back"] and problems["empty.flac"] == "empty file (0 bytes)"
    assert listing.non_audio == ["empty.txt"]
