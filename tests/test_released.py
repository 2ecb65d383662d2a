"""Loading the authors' released checkpoint, checked on a fake one of the same layout but tiny shapes."""

import pathlib

import pytest
import torch

from salsa_lib.config import Stage1Config
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.model import build_dual_encoder
from salsa_lib.released import (RELEASED_CONFIG, check_hyperparameters, compare_hyperparameters, load_for_evaluation,
                                load_released_checkpoint)

TINY = Stage1Config(passt_width=64, passt_depth=1, passt_heads=2, embed_dim=32, window_seconds=1.0,
                    train_seconds=1.0, eval_seconds=1.0)

# our name -> the name in the authors' Lightning module (written out here, not taken from the module)
LAYOUT = [("audio_encoder.passt.", "audio_embedding_model.model.model."),
          ("text_encoder.model.", "sentence_embedding_model."),
          ("project_audio.", "project_audio.0."),
          ("project_text.", "project_sentence.0.")]
EXTRAS = {"timing_tau": torch.tensor(0.05), "audio_token": torch.zeros(1, 1, 8), "posencode.pe": torch.zeros(10, 8),
          "sentence_embedding_model.embeddings.position_ids": torch.arange(512)[None]}
# what the original's config would record for the paper's model (names from its code, spec 3-5)
PAPER_HPARAMS = {"audio_features": {"model": "passt", "segment_length": 10, "hop_length": 10, "aggregate": "mean"},
                 "sentence_features": {"model": "roberta-large", "max_sentence_tokens": 32, "use_first_token": True},
                 "sequence_model": {"num_layers": 0}, "remove_punctuation": True, "normalize": True}


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


def to_released(state_dict):
    released = {}
    for key, value in state_dict.items():
        if key == "tau":
            released["tau"] = value.reshape(1)  # stored as a (1,) parameter: the loader must accept it
            continue
        ours, theirs = next((o, t) for o, t in LAYOUT if key.startswith(o))
        released[theirs + key[len(ours):]] = value.clone()
    return released


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return build_dual_encoder(TINY).eval()


@pytest.fixture
def released(original):
    state = to_released(original.state_dict())
    state.update(EXTRAS)
    for name, buffer in original.audio_encoder.mel.named_buffers():  # saved by older hear21passt
        state[f"audio_embedding_model.model.model.mel.{name}"] = buffer.clone()
    return state


def save(tmp_path, state_dict, hyper_parameters=None, name="passt_roberta.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": state_dict, "epoch": 3,
                "hyper_parameters": hyper_parameters or {"lr": 2e-5, "tau": 0.05}}, path)
    return path


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
    assert len(check_hyperparameters(path)) == 8 - 2  # both read from the stand-in's state
    assert len(check_hyperparameters(path, trust_pickle=True)) == 8 - 2
    # notebook 04's entry point: the same model and the same unchecked settings from one read
    (same_path, model, config), note = load_for_evaluation(path, config=TINY)
    assert same_path == path and config is TINY
    assert torch.equal(model.project_text.weight, original.project_text.weight)
    assert note.endswith(str(check_hyperparameters(path)))  # the six settings the checkpoint does not record


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


def test_paper_hyperparameters_pass_and_every_difference_is_named(tmp_path, released):
    assert compare_hyperparameters(PAPER_HPARAMS) == ([], [])
    changed = {**PAPER_HPARAMS, "remove_punctuation": False, "normalize": False,
               "audio_features": {**PAPER_HPARAMS["audio_features"], "aggregate": "max", "segment_length": 5},
               "sentence_features": {"max_sentence_tokens": 64, "use_first_token": False},
               "sequence_model": {"num_layers": 2}}
    differences, _ = compare_hyperparameters(changed)
    text = " ".join(differences)
    for named in ("audio_features.aggregate='max'", "audio_features.segment_length=5", "max_sentence_tokens=64",
                  "remove_punctuation=False", "normalize=False", "sequence_model.num_layers=2",
                  "use_first_token=False"):
        assert named in text
    assert len(differences) == 7
    path = save(tmp_path, released, changed)
    with pytest.raises(ConfigError, match="sequence_model.num_layers=2"):
        load_released_checkpoint(path, TINY)


def test_unrecorded_settings_are_listed_not_guessed(tmp_path, released):
    differences, unchecked = compare_hyperparameters({"lr": 2e-5})
    assert differences == [] and len(unchecked) == 8 and any("max_sentence_tokens" in u for u in unchecked)
    assert len(check_hyperparameters(save(tmp_path, released, {"lr": 2e-5}))) == 8


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
