"""Loading the authors' released checkpoint, checked on a fake one of the same layout but tiny shapes."""

import pathlib
import pickle
import sys
import types

import pytest
import torch

from salsa_lib.core.model import build_dual_encoder
from salsa_lib.core.released import (RELEASED_CONFIG, check_hyperparameters, compare_hyperparameters,
                                     is_released_checkpoint, load_for_evaluation, load_released_checkpoint)
from salsa_lib.errors import ConfigError, DataError

from fake_release import TINY, released_state, save

# key names of the original checkpoint (its module names, method appendix A) -> ours, written out as data
ORIGINAL_NAMES = {
    "audio_embedding_model.model.model.patch_embed.proj.weight": "audio_encoder.passt.patch_embed.proj.weight",
    "audio_embedding_model.model.model.cls_token": "audio_encoder.passt.cls_token",
    "audio_embedding_model.model.model.dist_token": "audio_encoder.passt.dist_token",
    "audio_embedding_model.model.model.new_pos_embed": "audio_encoder.passt.new_pos_embed",
    "audio_embedding_model.model.model.freq_new_pos_embed": "audio_encoder.passt.freq_new_pos_embed",
    "audio_embedding_model.model.model.time_new_pos_embed": "audio_encoder.passt.time_new_pos_embed",
    "audio_embedding_model.model.model.blocks.0.attn.qkv.weight": "audio_encoder.passt.blocks.0.attn.qkv.weight",
    "audio_embedding_model.model.model.norm.weight": "audio_encoder.passt.norm.weight",
    "sentence_embedding_model.embeddings.word_embeddings.weight": "text_encoder.model.embeddings.word_embeddings.weight",
    "sentence_embedding_model.encoder.layer.0.attention.self.query.weight":
        "text_encoder.model.encoder.layer.0.attention.self.query.weight",
    "project_audio.0.weight": "project_audio.weight",
    "project_audio.0.bias": "project_audio.bias",
    "project_sentence.0.weight": "project_text.weight",
    "project_sentence.0.bias": "project_text.bias",
    "tau": "tau",
}
# the original's config for the paper's model: its default_config with the README's overrides, nested
# as its code nests it (the compared settings and some neighbours that must not be mistaken for them)
PAPER_HPARAMS = {
    "audio_features": {"model": "passt", "model_config": {"freq_scale": 1.0, "s_patchout_t": 15, "s_patchout_f": 2,
                                                          "freqm": 0, "timem": 0, "return_sequence": False},
                       "use_local_model": False, "frozen": False, "adopt_n_layers": 0, "segment_length": 10,
                       "hop_length": 10, "aggregate": "mean",
                       "sequence_model": {"num_layers": 0, "dim": 768, "use_first_token": True,
                                          "normalize_input": False, "reduce_sequence": False}},
    "sentence_features": {"model": "roberta-large", "frozen": False, "adopt_n_layers": 0, "use_first_token": True,
                          "aggregate": "mean", "max_sentence_tokens": 32, "remove_punctuation": True},
    "initial_tau": 0.05, "freeze_tau": True, "shared_representation_size": 1024, "normalize": True,
    "max_epochs": 20, "lr_audio_encoder": 2e-5, "half_precision": True, "distill_from": [],
}


class ReadOnlyDict(dict):
    """Pickles as sacred's ReadOnlyDict does, the class the original's nested config is made of: its
    reduce is (class, (plain copy,)), so the items travel only as the argument of a class call."""

    def __reduce__(self):
        return type(self), ({**self},)


def read_only(config):
    """Nested dicts as sacred's make_read_only leaves them (the top level stays a plain dict, as the
    original's ``dict(_config)`` hands it to Lightning)."""
    def convert(value):
        return ReadOnlyDict({k: convert(v) for k, v in value.items()}) if isinstance(value, dict) else value
    return {k: convert(v) for k, v in config.items()}


class TrainingOptions:
    """Stands for an object the authors' config may pickle (Lightning saves hparams as given)."""

    def __init__(self, lr):
        self.lr = lr


class Payload:
    """A pickle that runs code when loaded: touches a marker file (harmless stand-in for os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return build_dual_encoder(TINY).eval()


@pytest.fixture
def released(original):
    return released_state(original)


def test_released_config_is_the_paper_architecture():
    assert RELEASED_CONFIG.profile == "clotho"
    assert RELEASED_CONFIG.audio_encoder == "passt_s_p16_s16_128_ap468" and not RELEASED_CONFIG.pretrained_audio
    assert (RELEASED_CONFIG.text_encoder, RELEASED_CONFIG.window_seconds, RELEASED_CONFIG.embed_dim,
            RELEASED_CONFIG.text_trainable_layers) == ("roberta-large", 10.0, 1024, -1)


def test_load_rejects_changed_mel_buffers(tmp_path, released):
    released["audio_embedding_model.model.model.mel.window"] = torch.ones(800)
    with pytest.raises(ConfigError, match="mel.window"):
        load_released_checkpoint(save(tmp_path, released), TINY)


def test_load_reproduces_the_model(tmp_path, released, original):
    loaded = load_released_checkpoint(save(tmp_path, released), TINY)
    assert not loaded.training
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert set(ours) == set(theirs) and ours["tau"].shape == ()  # renamed, extras dropped, (1,) tau reshaped
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    waveform = torch.randn(2, 32000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        assert torch.equal(loaded.embed_text(["a dog barks twice"]), original.embed_text(["a dog barks twice"]))
        assert torch.equal(loaded.embed_audio(waveform, lengths), original.embed_audio(waveform, lengths))


def test_unknown_keys_are_listed_by_their_released_names(tmp_path, released):
    released["audio_embedding_model.model.model.blocks.0.extra"] = torch.zeros(3)
    released["something_else.weight"] = torch.zeros(3)
    with pytest.raises(ConfigError) as err:
        load_released_checkpoint(save(tmp_path, released), TINY)
    assert "audio_embedding_model.model.model.blocks.0.extra" in str(err.value)
    assert "something_else.weight" in str(err.value)


def test_missing_key_is_named(tmp_path, released):
    del released["project_sentence.0.weight"]
    with pytest.raises(ConfigError, match="missing") as err:
        load_released_checkpoint(save(tmp_path, released), TINY)
    assert "project_text.weight" in str(err.value) and "project_sentence.0.weight" in str(err.value)


def test_classifier_heads_may_be_absent(tmp_path, released):
    for key in [k for k in released if ".model.model.head." in k]:
        del released[key]
    assert load_released_checkpoint(save(tmp_path, released), TINY) is not None


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, released):
    released["project_audio.0.weight"] = torch.zeros(32, 65)
    with pytest.raises(ConfigError) as err:
        load_released_checkpoint(save(tmp_path, released), TINY)
    message = str(err.value)
    assert "project_audio.weight" in message and "(32, 65)" in message and "(32, 64)" in message


def test_pickled_config_objects_are_read_as_inert_data(tmp_path, released, original):
    # two of the compared settings, stored inside a pickled object of a class the loader never imports
    path = save(tmp_path, released, {"options": TrainingOptions({"normalize": True, "use_first_token": True})})
    loaded = load_released_checkpoint(path, TINY)  # the weights score without unpickling any code
    assert torch.equal(loaded.project_text.weight, original.project_text.weight)
    assert len(check_hyperparameters(path)) == 9 - 2  # both read from the stand-in's state
    assert len(check_hyperparameters(path, trust_pickle=True)) == 9 - 2
    # notebook 04's entry point: the same model and the same unchecked settings from one read
    (same_path, model, config), note = load_for_evaluation(path, config=TINY)
    assert same_path == path and config is TINY
    assert torch.equal(model.project_text.weight, original.project_text.weight)
    assert note.endswith(str(check_hyperparameters(path)))  # the seven settings the checkpoint does not record


def test_code_in_the_pickle_does_not_run(tmp_path, released):
    marker = tmp_path / "pwned"
    path = save(tmp_path, released, {"payload": Payload(marker)})
    with pytest.raises(ConfigError, match="-p trust_released_pickle true") as err:
        load_released_checkpoint(path, TINY)
    assert "arbitrary code" in str(err.value)
    with pytest.raises(ConfigError, match="-p trust_released_pickle true"):
        check_hyperparameters(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize("key", ["audio_sequence.layers.0.linear1.weight", "audio_output_projection.0.weight"])
def test_sequence_model_weights_mean_another_model(tmp_path, released, key):
    released[key] = torch.zeros(4, 4)
    with pytest.raises(ConfigError, match="different model") as err:
        load_released_checkpoint(save(tmp_path, released), TINY)
    assert key in str(err.value)


def _changed():
    """The paper's config with every compared setting changed (return_sequence: pooled token sequence)."""
    audio, sentence = PAPER_HPARAMS["audio_features"], PAPER_HPARAMS["sentence_features"]
    return {**PAPER_HPARAMS, "normalize": False,
            "audio_features": {**audio, "aggregate": "max", "segment_length": 5, "hop_length": 5,
                               "model_config": {**audio["model_config"], "return_sequence": True},
                               "sequence_model": {**audio["sequence_model"], "num_layers": 2}},
            "sentence_features": {**sentence, "max_sentence_tokens": 64, "use_first_token": False,
                                  "remove_punctuation": False}}


CHANGED_NAMED = ("audio_features.aggregate='max'", "audio_features.segment_length=5", "audio_features.hop_length=5",
                 "sentence_features.max_sentence_tokens=64", "sentence_features.remove_punctuation=False",
                 "normalize=False", "audio_features.sequence_model.num_layers=2",
                 "sentence_features.use_first_token=False", "audio_features.model_config.return_sequence=True")


def test_paper_hyperparameters_pass_and_every_difference_is_named(tmp_path, released):
    assert compare_hyperparameters(PAPER_HPARAMS) == ([], [])
    differences, _ = compare_hyperparameters(_changed())
    text = " ".join(differences)
    for named in CHANGED_NAMED:
        assert named in text
    assert len(differences) == len(CHANGED_NAMED) == 9
    path = save(tmp_path, released, _changed())
    with pytest.raises(ConfigError, match="sequence_model.num_layers=2"):
        load_released_checkpoint(path, TINY)


def test_settings_pickled_as_sacred_read_only_dicts_are_compared(tmp_path, released):
    """The original's nested config reduces to ReadOnlyDict(plain_dict): the stand-in's arguments are data."""
    paper = save(tmp_path, released, read_only(PAPER_HPARAMS), name="paper.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="ReadOnlyDict"):  # a foreign class, as sacred's is
        torch.load(paper, weights_only=True)
    assert check_hyperparameters(paper) == [] == check_hyperparameters(paper, trust_pickle=True)  # all read
    changed = save(tmp_path, released, read_only(_changed()), name="changed.ckpt")
    for trust_pickle in (False, True):
        with pytest.raises(ConfigError) as err:
            load_released_checkpoint(changed, TINY, trust_pickle=trust_pickle)
        for named in CHANGED_NAMED:
            assert named in str(err.value)


def test_a_trusted_load_names_a_module_that_is_not_installed(tmp_path, released, monkeypatch):
    """The original pickles sacred's classes; without sacred only the safe load can read them."""
    absent = types.ModuleType("absent_config_module")
    holder = type("ReadOnlyDict", (ReadOnlyDict,), {"__module__": absent.__name__})
    absent.ReadOnlyDict = holder
    monkeypatch.setitem(sys.modules, absent.__name__, absent)
    path = save(tmp_path, released, {"audio_features": holder({"aggregate": "max"})})
    monkeypatch.delitem(sys.modules, absent.__name__)
    with pytest.raises(ConfigError, match="'absent_config_module', which is not installed; load it without "
                                          "trust_released_pickle"):
        check_hyperparameters(path, trust_pickle=True)
    with pytest.raises(ConfigError, match="audio_features.aggregate='max'"):  # the safe load still reads it
        check_hyperparameters(path)


def test_original_key_names_land_on_our_modules(tmp_path, released, original):
    """Checked against the original's names as data, not against our own renaming rules."""
    assert set(ORIGINAL_NAMES) <= set(released)  # the fake checkpoint's layout is the original's
    ours = original.state_dict()
    generator = torch.Generator().manual_seed(2)
    for theirs, mine in ORIGINAL_NAMES.items():
        released[theirs] = torch.randn(ours[mine].shape if mine != "tau" else (1,), generator=generator)
    loaded = load_released_checkpoint(save(tmp_path, released), TINY).state_dict()
    for theirs, mine in ORIGINAL_NAMES.items():
        assert torch.equal(loaded[mine], released[theirs].reshape(loaded[mine].shape)), theirs


def test_unrecorded_settings_are_listed_not_guessed(tmp_path, released):
    differences, unchecked = compare_hyperparameters({"lr": 2e-5})
    assert differences == [] and len(unchecked) == 9 and any("max_sentence_tokens" in u for u in unchecked)
    assert any("return_sequence" in u for u in unchecked)
    assert len(check_hyperparameters(save(tmp_path, released, {"lr": 2e-5}))) == 9


def test_hyperparameters_inside_a_pickled_container_are_compared(tmp_path, released):
    path = save(tmp_path, released, {"config": TrainingOptions(PAPER_HPARAMS | {"normalize": False})})
    with pytest.raises(ConfigError, match="normalize=False"):
        load_released_checkpoint(path, TINY)


def test_missing_and_broken_files(tmp_path):
    missing = tmp_path / "checkpoints" / "passt_roberta.ckpt"
    with pytest.raises(DataError, match="data/checkpoints/passt_roberta.ckpt") as err:
        load_released_checkpoint(missing, TINY)
    assert str(missing) in str(err.value)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="not a PyTorch checkpoint"):
        load_released_checkpoint(broken, TINY)
    torch.save({"weights": {}}, tmp_path / "plain.pt")
    with pytest.raises(DataError, match="state_dict"):
        check_hyperparameters(tmp_path / "plain.pt")


def test_the_release_is_told_from_our_checkpoints_by_content_without_unpickling(tmp_path, released, original):
    ours = tmp_path / "ours.ckpt"  # the layout of this project's checkpoints (core.checkpoints)
    torch.save({"hyper_parameters": {"params": TINY.to_params()},
                "state_dict": {f"model.{k}": v for k, v in original.state_dict().items()}}, ours)
    marker = tmp_path / "pwned"
    named_like_ours = save(tmp_path, released, name="best.ckpt")  # the name says nothing; the content does
    with_payload = save(tmp_path, released, {"payload": Payload(marker)}, name="payload.ckpt")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"<html>not found</html>")
    assert is_released_checkpoint(named_like_ours) and is_released_checkpoint(with_payload)
    assert not marker.exists()  # telling the formats apart ran nothing of the pickle
    for other in (ours, broken, tmp_path / "missing.ckpt", tmp_path):
        assert not is_released_checkpoint(other), other


def test_the_text_models_pretrained_weights_are_never_fetched(tmp_path, released, original, monkeypatch):
    """Every weight comes from the checkpoint: roberta-large needs only its configuration and tokenizer."""
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("pretrained text weights were fetched")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)
    loaded = load_released_checkpoint(save(tmp_path, released), TINY)
    assert torch.equal(loaded.text_encoder.model.embeddings.word_embeddings.weight,
                       original.text_encoder.model.embeddings.word_embeddings.weight)
