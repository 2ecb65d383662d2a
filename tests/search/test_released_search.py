"""The authors' released checkpoint in search: the API, the command line and the demo take it like one of
ours (told apart by content), and every refusal of the loader reaches the user unchanged.

The checkpoint is a fake in the authors' layout at tiny shapes (tests/fake_release.py); the released
architecture is replaced by the same tiny one, as a real release would need PaSST-S and roberta-large.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from salsa_lib.core import encoders, released
from salsa_lib.core.model import build_dual_encoder
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.search import cli, demo, menu, retrieval

from fake_release import TINY, released_state, save

SR = 32000


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return build_dual_encoder(TINY).eval()


@pytest.fixture
def release(tmp_path, original, monkeypatch):
    """A fake passt_roberta.ckpt where the README puts it (under SALSA_HOME), with a tiny architecture."""
    monkeypatch.setenv("SALSA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(released, "RELEASED_CONFIG", TINY)
    folder = released.default_checkpoint_path().parent
    folder.mkdir(parents=True)
    return save(folder, released_state(original))


@pytest.fixture
def sounds(tmp_path):
    """A 2.5 s recording (1 s windows every 0.5 s: spans) and a 0.6 s clip."""
    root = tmp_path / "sounds"
    root.mkdir()
    t = np.arange(int(2.5 * SR)) / SR
    sf.write(root / "long.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    sf.write(root / "short.flac", (0.3 * np.sin(2 * np.pi * 1500 * t[:int(0.6 * SR)])).astype(np.float32), SR)
    return root


def test_the_api_loads_the_release_by_content_and_searches_with_spans(release, original, sounds):
    model, config, model_id = retrieval.load_search_model(release)
    assert config is TINY and model_id == retrieval.model_id_of(release) and not model.training
    with torch.no_grad():
        assert torch.equal(model.embed_text(["a tone"]), original.embed_text(["a tone"]))
    index = retrieval.build_index(sounds, model, model_id, progress=False)
    assert index.paths == ["long.wav", "short.flac"] and index.windows == 4 + 1
    windows = retrieval.search(index, model, model_id, "a high tone", top_k=5, per_file=False)
    assert {r.span for r in windows if r.path == "long.wav"} == {
        "00:00–00:01", "00:00.5–00:01.5", "00:01–00:02", "00:01.5–00:02.5"}


def test_the_command_line_searches_with_the_release(release, sounds, capsys):
    argv = ["--model", str(release), "--audio-dir", str(sounds), "--json", "--all-windows", "--top-k", "5", "a tone"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_id"] == retrieval.model_id_of(release) and report["windows"] == 5
    assert {r["path"] for r in report["results"]} == {"long.wav", "short.flac"}
    assert all("–" in r["span"] for r in report["results"])


def test_the_demo_menu_names_the_release_and_searches_with_it(release, sounds):
    models = demo.available_models("nothing-trained")
    assert models == {menu.RELEASED_ENTRY: release}
    assert demo.choose_model(models) == menu.RELEASED_ENTRY  # the only model is the default
    words = demo.describe_model(release)
    assert "PaSST-S + RoBERTa-large" in words and "40.11 % mAP@10" in words and "DCASE 2024" in words
    assert demo.menu_text(models, menu.RELEASED_ENTRY).splitlines() == [
        f"model: {menu.RELEASED_ENTRY}", "menu:", f"* {menu.RELEASED_ENTRY}: {words}"]
    app = demo.QueryDemo(models, {"folder": demo.Collection(sounds)}, top_k=2)
    table, _ = app.query("a tone", menu.RELEASED_ENTRY, "folder")
    assert sorted(table["file"]) == ["long.wav", "short.flac"]
    assert table.loc[table.file == "long.wav", "span"].item().startswith("00:0")  # a window of the recording
    assert table.loc[table.file == "short.flac", "span"].item() == "whole clip"


def test_an_absent_release_is_not_in_the_menu(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    assert demo.available_models("nothing-trained") == {}
    with pytest.raises(ConfigError, match="passt_roberta.ckpt"):
        demo.choose_model({})
    with pytest.raises(DataError, match="does not exist: give a best.ckpt of stage 1 or 2 .* passt_roberta.ckpt"):
        retrieval.load_search_model(tmp_path / "data" / "checkpoints" / "passt_roberta.ckpt")


def test_a_local_text_encoder_folder_is_taken_for_the_release_only(release, tmp_path, monkeypatch):
    folder = encoders.resolve_text_model(encoders.PACKAGED_MINILM)  # stands for a copy of roberta-large's files
    monkeypatch.setattr(released, "RELEASED_CONFIG", TINY.replace(text_encoder="roberta-large"))  # not cached here
    model, config, _ = retrieval.load_search_model(release, text_encoder=folder)
    assert config.text_encoder == folder and model.text_encoder.dim == 384
    ours = tmp_path / "ours.ckpt"
    torch.save({"hyper_parameters": {"params": TINY.to_params()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ours)
    with pytest.raises(ConfigError, match="for the released checkpoint only"):
        retrieval.load_search_model(ours, text_encoder=folder)
    assert retrieval.load_search_model(ours)[1] == TINY  # our own format, loaded by its saved parameters


class Payload:
    """A pickle that runs code when loaded: touches a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (self.marker,))


def _refused(argv, capsys) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    return err


def test_every_refusal_of_the_loader_reaches_the_command_line(release, original, sounds, tmp_path, capsys):
    base = ["--audio-dir", str(sounds), "a tone"]
    state = released_state(original)
    unknown = save(tmp_path, {**state, "something_else.weight": torch.zeros(3)}, name="unknown.ckpt")
    assert "unexpected keys (released names): ['something_else.weight']" in _refused(["--model", str(unknown), *base],
                                                                                    capsys)
    other = save(tmp_path, state, {"audio_features": {"aggregate": "max"}}, name="other.ckpt")
    assert "trained with other settings" in _refused(["--model", str(other), *base], capsys)
    marker = tmp_path / "pwned"
    payload = save(tmp_path, state, {"payload": Payload(marker)}, name="payload.ckpt")
    err = _refused(["--model", str(payload), *base], capsys)
    assert "arbitrary code" in err and "--trust-released-pickle" in err and not marker.exists()


def test_trusting_the_pickle_reaches_the_loader(release, sounds, monkeypatch, capsys):
    calls = []
    load = released.load_released_checkpoint
    monkeypatch.setattr(released, "load_released_checkpoint",
                        lambda path, config, trust_pickle: calls.append(trust_pickle) or load(path, config))
    for flag in ([], ["--trust-released-pickle"]):
        assert cli.main(["--model", str(release), "--audio-dir", str(sounds), *flag, "a tone"]) == 0
    capsys.readouterr()
    assert calls == [False, True]
