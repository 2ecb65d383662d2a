"""Search API and CLI: windows and spans, cache, backends, query validation, a 2-hour recording."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from salsa_lib.config import Stage1Config
from salsa_lib.core.model import build_dual_encoder
from salsa_lib.data.audio import load_audio
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.search import cli as search, retrieval, vector_index
from salsa_lib.search import sounds as sound_files  # the name sounds is the fixture's

from conftest import TINY_MODEL  # window 1 s, 32-d embeddings
from search_stub import StubModel

SR = 32000
GOOD = ["dog.wav", "short.flac", "sub/Bird.WAV", "sub/rain.ogg"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_dual_encoder(Stage1Config(profile="test", **TINY_MODEL)).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """Saved the way RetrievalModule checkpoints are: parameters + state_dict with a model. prefix."""
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    params = Stage1Config(profile="test", **TINY_MODEL).to_params()
    torch.save({"hyper_parameters": {"params": params},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _tone(seconds, rate, freq, channels=1, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(seed).standard_normal(len(t))
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def sounds(tmp_path):
    root = tmp_path / "sounds"
    (root / "sub" / "empty").mkdir(parents=True)
    sf.write(root / "dog.wav", _tone(2.5, 44100, 440, channels=2), 44100)  # 3 windows, stereo, 44.1 kHz
    sf.write(root / "short.flac", _tone(0.3, SR, 880, seed=1), SR)
    sf.write(root / "sub" / "rain.ogg", _tone(1.2, 22050, 300, seed=2), 22050)
    sf.write(root / "sub" / "Bird.WAV", _tone(0.8, 16000, 2000, seed=3), 16000)
    (root / "x.wav").write_text("this is not audio")
    (root / "notes.txt").write_text("ignore me")
    return root


def _embed(model, wave, n_windows):
    padded = np.zeros(n_windows * SR, dtype=np.float32)
    padded[:len(wave)] = wave
    with torch.no_grad():
        return model.embed_audio(torch.from_numpy(padded)[None], torch.tensor([len(wave) / len(padded)]))[0].numpy()


def _counting_loader(monkeypatch):
    calls, stream = [], sound_files.stream_windows

    def loader(path, *args, **kwargs):
        calls.append(path.name)
        return stream(path, *args, **kwargs)

    monkeypatch.setattr(sound_files, "stream_windows", loader)
    return calls


def test_index_lists_audio_by_content_and_reports_the_rest(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    assert index.paths == GOOD  # recursive, by content
    assert [path for path, _ in index.skipped] == ["x.wav"] and index.skipped[0][1].startswith("not audio")
    assert index.non_audio == ["notes.txt"] and any("1 file(s) are not audio" in n for n in index.notes)
    # 1 s windows every 0.5 s: 2.5 s -> 4 full windows, nothing left over; 0.3 s -> one padded window;
    # 1.2 s -> [0, 1) and a padded [0.5, 1.2)
    assert [int((index.file_of == i).sum()) for i in range(4)] == [4, 1, 1, 2]
    assert index.embeddings.shape == (8, 32) and index.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(index.durations, [2.5, 0.3, 0.8, 1.2], atol=1e-3)
    np.testing.assert_allclose(index.starts[:4], [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(index.ends[:4], [1, 1.5, 2, 2.5])
    assert index.ends[4] == pytest.approx(0.3, abs=1e-3)  # a padded window ends where the audio does
    meta = index.metadata
    assert meta["model_id"] == "m1" and meta["policy"]["hop_seconds"] == 0.5 and meta["files"] == 4
    assert index.cache_path == sounds / ".salsa_index" / "m1.npz" and index.cache_path.exists()
    assert index.stats == {"reused": 0, "embedded": 4, "removed": 0}


def test_each_window_is_embedded_as_the_model_embeds_a_one_window_clip(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    dog, short = load_audio(sounds / "dog.wav"), load_audio(sounds / "short.flac")
    np.testing.assert_allclose(index.embeddings[0], _embed(model, dog[:SR], 1), atol=2e-3)  # streamed vs librosa
    np.testing.assert_allclose(index.embeddings[3], _embed(model, dog[int(1.5 * SR):], 1), atol=2e-3)
    np.testing.assert_allclose(index.embeddings[4], _embed(model, short, 1), atol=1e-4)  # padded, masked


def test_a_file_scores_as_its_best_window_and_all_windows_can_be_listed(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    for row in range(index.windows):
        best = index.search_embedding(index.embeddings[row], top_k=4)
        assert best[0].path == index.paths[index.file_of[row]] and best[0].score == pytest.approx(1, abs=1e-5)
        assert (best[0].start, best[0].end) == (index.starts[row], index.ends[row])
        assert len({r.path for r in best}) == 4  # one row per file
    windows = index.search_embedding(index.embeddings[0], top_k=20, per_file=False)
    assert len(windows) == 8 and [r.path for r in windows].count("dog.wav") == 4
    assert windows[0].span == "00:00–00:01"
    spans = {(r.path, r.span) for r in windows}
    assert ("short.flac", "00:00–00:00.3") in spans and ("sub/rain.ogg", "00:00.5–00:01.2") in spans
    assert [vector_index.format_time(s) for s in (3 * 3600 + 200, 200, 1.5, 0.04)] == ["3:03:20", "03:20", "00:01.5",
                                                                                          "00:00"]


def test_two_hour_recording_is_streamed_in_bounded_memory_and_the_event_found(tmp_path):
    """Stub encoder (tests/search/search_stub.py): its embedding is the share of high-pitched energy."""
    import tracemalloc

    rate, event = 8000, 5000.0  # a 3 kHz whistle at 1:23:20 for 4 s in 2 h of 50 Hz hum
    path = tmp_path / "field recording.flac"
    t = np.arange(600 * rate) / rate
    hum = (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)  # 10 min, written 12 times
    with sf.SoundFile(path, "w", rate, 1, format="FLAC") as handle:
        for block in range(12):
            wave = hum.copy()
            if block * 600 <= event < (block + 1) * 600:
                at = int((event - block * 600) * rate)
                wave[at:at + 4 * rate] += 0.3 * np.sin(2 * np.pi * 3000 * t[:4 * rate]).astype(np.float32)
            handle.write(wave)
    stub = StubModel()
    tracemalloc.start()
    index = retrieval.build_index(tmp_path, stub, "stub", progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert index.durations[0] == pytest.approx(7200, abs=0.01) and index.windows == stub.windows_seen == 1439
    assert peak < 100 * 2**20  # the decoded file alone would be 920 MB of float32
    best = index.search_embedding([1.0, 0.0, 0.0], top_k=1)[0]
    assert best.start <= event and best.end >= event + 4 and best.span in ("1:23:15–1:23:25", "1:23:20–1:23:30")
    moments = index.search_embedding([1.0, 0.0, 0.0], top_k=3, per_file=False)
    assert {round(r.start) for r in moments[:2]} == {4995, 5000}


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_exact_and_faiss_backends_agree(monkeypatch, kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = retrieval.AudioIndex.from_embeddings([f"c{i}.wav" for i in range(400)], vectors, "rand", faiss_kind=kind)
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    assert index.resolve_backend() == "exact"
    exact = [index.search_embedding(q, 10, "exact") for q in queries]
    approx = [index.search_embedding(q, 10, "faiss") for q in queries]
    recall = np.mean([len({r.path for r in a} & {r.path for r in b}) / 10 for a, b in zip(exact, approx)])
    assert recall >= 0.9  # 8-bit re-ranking may swap near-ties; the rest is found
    shown = {r.path: r.score for r in exact[0]}
    assert all(r.score == pytest.approx(shown[r.path], abs=1e-6) for r in approx[0] if r.path in shown)  # exact cosines
    monkeypatch.setattr(vector_index, "FAISS_THRESHOLD", 300)
    assert index.resolve_backend() == "faiss" and index.resolve_backend("exact") == "exact"
    index.drop_vectors()
    assert [r.path for r in index.search_embedding(queries[0], 10)] == [r.path for r in approx[0]]
    with pytest.raises(ConfigError, match="FAISS codes"):
        index.search_embedding(queries[0], 5, "exact")
    with pytest.raises(ConfigError, match="backend"):
        index.search_embedding(queries[0], 5, "annoy")


def test_incremental_update_embeds_only_new_and_changed_files(sounds, model, monkeypatch):
    first = retrieval.build_index(sounds, model, "m1", progress=False)
    calls = _counting_loader(monkeypatch)
    again = retrieval.build_index(sounds, model, "m1", progress=False)
    assert calls == [] and again.stats["reused"] == 4 and again.skipped == first.skipped
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    stat = (sounds / "short.flac").stat()
    os.utime(sounds / "short.flac", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    (sounds / "sub" / "rain.ogg").unlink()
    sf.write(sounds / "sub" / "empty" / "new.mp3", _tone(0.5, SR, 500), SR)  # libsndfile writes mp3
    update = retrieval.build_index(sounds, model, "m1", progress=False)
    assert sorted(calls) == ["new.mp3", "short.flac"]
    assert update.paths == ["dog.wav", "short.flac", "sub/Bird.WAV", "sub/empty/new.mp3"]
    assert update.stats == {"reused": 2, "embedded": 2, "removed": 1}
    np.testing.assert_allclose(update.embeddings[1], first.embeddings[1], atol=1e-6)  # same content
    calls.clear()
    retrieval.build_index(sounds, model, "m1", progress=False, rebuild=True)
    assert sorted(calls) == sorted(["dog.wav", "short.flac", "Bird.WAV", "new.mp3"])


def test_corrupt_cache_is_rebuilt(sounds, model):
    good = retrieval.build_index(sounds, model, "m1", progress=False)
    data = good.cache_path.read_bytes()
    for broken in (b"garbage", data[: len(data) // 2]):
        good.cache_path.write_bytes(broken)
        index = retrieval.build_index(sounds, model, "m1", progress=False)
        assert index.stats["embedded"] == 4 and "unreadable" in index.notes[0]
        np.testing.assert_allclose(index.embeddings, good.embeddings, atol=1e-6)
        assert retrieval.build_index(sounds, model, "m1", progress=False).stats["reused"] == 4  # rewritten


def test_failed_cache_write_keeps_the_good_cache(sounds, model, monkeypatch):
    good = retrieval.build_index(sounds, model, "m1", progress=False)
    before = good.cache_path.read_bytes()

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    sf.write(sounds / "more.wav", _tone(0.4, SR, 600), SR)
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    assert "more.wav" in index.paths and any("could not write" in note for note in index.notes)
    assert good.cache_path.read_bytes() == before
    assert sorted(p.name for p in good.cache_path.parent.iterdir()) == ["m1.lock", "m1.npz"]  # no temporary


def test_model_id_mismatch_is_refused(sounds, model):
    index = retrieval.build_index(sounds, model, "aaaa", progress=False)
    with pytest.raises(ConfigError, match="'aaaa'.*'bbbb'"):
        retrieval.search(index, model, "bbbb", "a dog barks")


def test_query_validation_and_notes(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    for empty in ("", "   \n", "?!..."):
        with pytest.raises(ConfigError, match="empty query"):
            retrieval.search(index, model, "m1", empty)
    plain = retrieval.search(index, model, "m1", "a dog barks", top_k=2)
    assert len(plain) == 2 and plain.notes == []
    long = retrieval.search(index, model, "m1", "a dog barks loudly " * 20)
    assert len(long) == 4 and any("tokens" in note and "32" in note for note in long.notes)
    for text in ("犬が吠える 🐶", "🔥🔥", "собака лает", "كلب ينبح"):
        results = retrieval.search(index, model, "m1", text, top_k=3)
        assert len(results) == 3 and all(np.isfinite(r.score) and -1 <= r.score <= 1 + 1e-5 for r in results)


def test_folders_without_readable_audio_raise(tmp_path, model):
    with pytest.raises(DataError, match="no files"):
        retrieval.build_index(tmp_path, model, "m1", progress=False)
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(DataError, match="none of the 1 files.*x.wav"):
        retrieval.build_index(tmp_path, model, "m1", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        retrieval.build_index(tmp_path / "missing", model, "m1", progress=False)


def test_cli_prints_json_results(sounds, checkpoint, capsys):
    code = search.main(["--model", str(checkpoint), "--audio-dir", str(sounds), "--top-k", "3", "--json",
                        "a dog barks"])
    out, err = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert report["query"] == "a dog barks" and report["model_id"] == retrieval.model_id_of(checkpoint)
    assert [r["rank"] for r in report["results"]] == [1, 2, 3]
    assert {r["path"] for r in report["results"]} <= set(GOOD) and all("–" in r["span"] for r in report["results"])
    assert report["skipped"][0]["path"] == "x.wav" and "x.wav" in err and "1 file(s) that could not be decoded" in err
    assert report["non_audio"] == ["notes.txt"] and report["windows"] == 8
    assert search.main(["--model", str(checkpoint), "--audio-dir", str(sounds), "--json", "--all-windows",
                        "--top-k", "6", "dog"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 6
    assert (sounds / ".salsa_index" / f"{report['model_id']}.npz").exists()
    assert search.main(["--model", str(checkpoint), "--audio-dir", str(sounds), "dog"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "span", "path"] and len(table) == 5
    assert all("–" in line for line in table[1:])


def test_cli_hop_backend_and_rebuild_reach_the_index(sounds, checkpoint, capsys, monkeypatch):
    """--hop-seconds sets the windows (and invalidates the cache), --backend picks the search that runs,
    --rebuild embeds every file again."""
    every_window = ["--model", str(checkpoint), "--audio-dir", str(sounds), "--json", "--all-windows", "--top-k", "20"]
    faiss_searches, faiss_rows = [], vector_index.AudioIndex._faiss_rows
    monkeypatch.setattr(vector_index.AudioIndex, "_faiss_rows",
                        lambda self, *args: faiss_searches.append(args) or faiss_rows(self, *args))
    embedded = _counting_loader(monkeypatch)

    def run(*argv) -> dict:
        assert search.main([*every_window, *argv, "dog"]) == 0
        return json.loads(capsys.readouterr().out)

    half = run()
    assert half["policy"]["hop_seconds"] == 0.5 and half["windows"] == 8
    embedded.clear()
    quarter = run("--hop-seconds", "0.25")
    # 1 s windows every 0.25 s: 2.5 s -> 7 windows (0 ... 1.5), 0.3 s and 0.8 s -> 1 each, 1.2 s -> 2 (0, 0.25)
    assert quarter["policy"]["hop_seconds"] == 0.25 and quarter["windows"] == 11
    assert sorted(r["start"] for r in quarter["results"] if r["path"] == "dog.wav") == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5]
    assert sorted(embedded) == ["Bird.WAV", "dog.wav", "rain.ogg", "short.flac"]  # another hop: nothing reused
    assert quarter["backend"] == "exact" and faiss_searches == []  # auto: exact search below the FAISS threshold

    embedded.clear()
    via_faiss = run("--hop-seconds", "0.25", "--backend", "faiss")
    assert via_faiss["backend"] == "faiss" and len(faiss_searches) == 1 and embedded == []
    windows = {(r["path"], r["start"]): r["score"] for r in quarter["results"]}
    assert {(r["path"], r["start"]): r["score"] for r in via_faiss["results"]} == pytest.approx(windows, abs=1e-6)
    assert run("--hop-seconds", "0.25", "--backend", "exact")["backend"] == "exact" and len(faiss_searches) == 1

    assert embedded == []  # the cache served every run since the hop changed
    rebuilt = run("--hop-seconds", "0.25", "--rebuild")
    assert sorted(embedded) == ["Bird.WAV", "dog.wav", "rain.ogg", "short.flac"]
    assert {(r["path"], r["start"]): r["score"] for r in rebuilt["results"]} == pytest.approx(windows, abs=1e-6)

    assert search.main([*every_window, "--hop-seconds", "1.5", "dog"]) == 1  # longer than the 1 s window
    assert "hop_seconds" in capsys.readouterr().err


def test_cli_errors_exit_1_without_traceback(tmp_path, sounds, checkpoint, capsys):
    cases = [["--model", str(tmp_path / "missing.ckpt"), "--audio-dir", str(sounds), "dog"],
             ["--model", str(checkpoint), "--audio-dir", str(sounds), "  "],
             ["--model", str(checkpoint), "--audio-dir", str(sounds / "sub" / "empty"), "dog"]]
    for argv, expected in zip(cases, ["does not exist", "empty query", "no files"]):
        assert search.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and expected in err and "Traceback" not in err


def test_demo_plays_only_the_span_and_reads_the_score_for_people(tmp_path):
    import io

    from salsa_lib.search import demo

    path = tmp_path / "long.ogg"
    sf.write(path, _tone(30.0, 22050, 440), 22050)
    clip, rate = sf.read(io.BytesIO(demo.span_wav(path, 10.0, 12.5)))
    assert rate == SR and len(clip) == pytest.approx(2.5 * SR, abs=2)
    assert demo.spectrogram_png(path, 10.0, 12.5).startswith(b"\x89PNG")
    vectors = np.eye(4, dtype=np.float32)
    index = retrieval.AudioIndex.from_embeddings([f"{i}.wav" for i in range(4)], vectors, "m")
    assert demo.standing(index, vectors[0], 1.0) == "better than 75 % of 4 moments"


def test_search_needs_no_training_framework():
    import subprocess
    import sys

    code = "import sys, salsa_lib.search.cli, salsa_lib.search.demo; print(sorted(m for m in sys.modules if 'lightning' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
