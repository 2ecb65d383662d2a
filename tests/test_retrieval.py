"""Search API and CLI: index build, length policy, cache, backends, query validation."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from salsa_lib import retrieval, search
from salsa_lib.audio import load_audio
from salsa_lib.config import Stage1Config
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.model import build_dual_encoder

from conftest import TINY_MODEL  # window 1 s, 32-d embeddings

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
    calls = []

    def loader(path, sample_rate=SR):
        calls.append(path.name)
        return load_audio(path, sample_rate)

    monkeypatch.setattr(retrieval, "load_audio", loader)
    return calls


def test_index_lists_audio_skips_bad_files_and_stores_unit_embeddings(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    assert index.paths == GOOD  # recursive, case-insensitive extensions, .txt ignored
    assert [path for path, _ in index.skipped] == ["x.wav"] and "not an audio file" in index.skipped[0][1]
    assert index.embeddings.shape == (4, 32) and index.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(index.durations, [2.5, 0.3, 0.8, 1.2], atol=1e-3)
    meta = index.metadata
    assert meta["model_id"] == "m1" and meta["policy"]["max_seconds"] == 600 and meta["files"] == 4
    assert index.cache_path == sounds / ".salsa_index" / "m1.npz" and index.cache_path.exists()
    assert index.stats == {"reused": 0, "embedded": 4, "removed": 0} and not index.notes


def test_embedding_is_the_models_masked_mean_over_windows(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    dog, short = load_audio(sounds / "dog.wav"), load_audio(sounds / "short.flac")
    stored = dict(zip(index.paths, index.embeddings))
    np.testing.assert_allclose(stored["dog.wav"], _embed(model, dog, 3), atol=1e-5)
    # extra padding windows are masked out: the same as the evaluation's longer zero padding
    np.testing.assert_allclose(stored["dog.wav"], _embed(model, dog, 5), atol=1e-5)
    assert np.abs(stored["dog.wav"] - _embed(model, dog[:SR], 1)).max() > 1e-3  # not the first window only
    np.testing.assert_allclose(stored["short.flac"], _embed(model, short, 1), atol=1e-5)


def test_long_files_are_cut_to_max_seconds_with_a_note(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", max_seconds=2.0, progress=False)
    assert index.truncated == ["dog.wav"] and "dog.wav" in index.notes[0] and "2 s" in index.notes[0]
    dog = load_audio(sounds / "dog.wav")
    np.testing.assert_allclose(index.embeddings[0], _embed(model, dog[:2 * SR], 2), atol=1e-5)
    again = retrieval.build_index(sounds, model, "m1", max_seconds=2.0, progress=False)  # from the cache
    assert again.stats["reused"] == 4 and again.truncated == ["dog.wav"]


def test_search_embedding_finds_the_stored_file_first(sounds, model):
    index = retrieval.build_index(sounds, model, "m1", progress=False)
    for i, path in enumerate(index.paths):
        results = retrieval.search_embedding(index, index.embeddings[i], top_k=3)
        assert [r.rank for r in results] == [1, 2, 3]
        assert results[0].path == path and results[0].score == pytest.approx(1.0, abs=1e-5)
        assert results[0].score >= results[1].score >= results[2].score
    assert len(index.search_embedding(index.embeddings[0], top_k=50)) == 4
    with pytest.raises(ConfigError, match="dimensions"):
        index.search_embedding(np.ones(7))


def test_exact_and_faiss_backends_agree(monkeypatch):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = retrieval.AudioIndex.from_embeddings([f"c{i}.wav" for i in range(400)], vectors, "rand")
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    assert index.resolve_backend() == "exact"
    exact = [[r.path for r in index.search_embedding(q, 10, "exact")] for q in queries]
    faiss_all = [[r.path for r in index.search_embedding(q, 10, "faiss")] for q in queries]
    assert faiss_all == exact  # 2000 candidates cover the whole set: re-ranking makes it exact
    index.faiss_candidates = 100  # now FAISS must find the neighbours among a quarter of the set
    recall = np.mean([len(set(exact[i]) & {r.path for r in index.search_embedding(q, 10, "faiss")}) / 10
                      for i, q in enumerate(queries)])
    assert recall >= 0.9
    monkeypatch.setattr(retrieval, "FAISS_THRESHOLD", 300)
    assert index.resolve_backend() == "faiss" and index.resolve_backend("exact") == "exact"
    with pytest.raises(ConfigError, match="backend"):
        index.search_embedding(queries[0], 5, "annoy")


def test_incremental_update_embeds_only_new_and_changed_files(sounds, model, monkeypatch):
    first = retrieval.build_index(sounds, model, "m1", progress=False)
    calls = _counting_loader(monkeypatch)
    again = retrieval.build_index(sounds, model, "m1", progress=False)
    assert calls == [] and again.stats["reused"] == 4 and again.skipped == first.skipped  # x.wav not retried
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
    assert sorted(calls) == sorted(["dog.wav", "short.flac", "Bird.WAV", "new.mp3", "x.wav"])


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
    assert "more.wav" in index.paths and "could not write" in index.notes[-1]
    assert good.cache_path.read_bytes() == before
    assert [p.name for p in good.cache_path.parent.iterdir()] == ["m1.npz"]  # no temporary left behind


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
    with pytest.raises(DataError, match="no audio files"):
        retrieval.build_index(tmp_path, model, "m1", progress=False)
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(DataError, match="none of the 1 audio files.*x.wav"):
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
    assert {r["path"] for r in report["results"]} <= set(GOOD)
    assert report["skipped"][0]["path"] == "x.wav" and "x.wav" in err and "1 unreadable" in err
    assert (sounds / ".salsa_index" / f"{report['model_id']}.npz").exists()
    assert search.main(["--model", str(checkpoint), "--audio-dir", str(sounds), "dog"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "path"] and len(table) == 5


def test_cli_errors_exit_1_without_traceback(tmp_path, sounds, checkpoint, capsys):
    cases = [["--model", str(tmp_path / "missing.ckpt"), "--audio-dir", str(sounds), "dog"],
             ["--model", str(checkpoint), "--audio-dir", str(sounds), "  "],
             ["--model", str(checkpoint), "--audio-dir", str(sounds / "sub" / "empty"), "dog"]]
    for argv, expected in zip(cases, ["does not exist", "empty query", "no audio files"]):
        assert search.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and expected in err and "Traceback" not in err
