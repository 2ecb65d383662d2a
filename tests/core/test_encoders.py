"""Encoders: PaSST windowing and masked pooling (method §3.1), the text side (§4), the dual model (§5)."""

import urllib.error

import pytest
import torch

from salsa_lib.core import encoders
from salsa_lib.core.encoders import AudioEncoder, TextEncoder, build_passt, transformer_layers, with_dropout
from salsa_lib.errors import ConfigError, DownloadError


@pytest.fixture(scope="module")
def small_audio_encoder():
    torch.manual_seed(0)
    return AudioEncoder(build_passt("passt_small", 1.0, width=32, depth=1, heads=2), 1.0).eval()


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(encoders.PACKAGED_MINILM, trainable_layers=2).eval()


def test_masked_mean_keeps_only_windows_with_audio(small_audio_encoder):
    torch.manual_seed(1)
    audio = torch.randn(2, 3 * 32000)  # three 1 s windows
    with torch.no_grad():
        pooled = small_audio_encoder(audio, torch.tensor([0.4, 1.0]))  # ceil(0.4 * 3) = 2 windows
        windows = []
        for w in range(3):
            mel = small_audio_encoder.mel(audio[:, w * 32000:(w + 1) * 32000]).unsqueeze(1)
            cls, dist = small_audio_encoder.passt.forward_features(mel)
            windows.append((cls + dist) / 2)
    assert torch.allclose(pooled[0], (windows[0][0] + windows[1][0]) / 2, atol=1e-5)
    assert torch.allclose(pooled[1], (windows[0][1] + windows[1][1] + windows[2][1]) / 3, atol=1e-5)


def test_short_audio_is_padded_to_whole_windows(small_audio_encoder):
    with torch.no_grad():
        out = small_audio_encoder(torch.randn(3, 40000), torch.tensor([1.0, 0.5, 0.01]))
    assert out.shape == (3, 32) and torch.isfinite(out).all()


def test_paper_passt_token_grid_is_8_by_62_per_10_s_window():
    passt = build_passt(encoders.PAPER_PASST, 10.0, pretrained=False)
    assert tuple(passt.patch_embed.grid_size) == (8, 62)
    assert (passt.s_patchout_t, passt.s_patchout_f) == (15, 2)
    assert passt.embed_dim == 768 and len(passt.blocks) == 12


def test_unknown_audio_encoder_and_offline_weights(monkeypatch):
    with pytest.raises(ConfigError, match="'passt_xl'"):
        build_passt("passt_xl", 10.0)
    import hear21passt.models.passt as passt_module

    def offline(**kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(passt_module, "get_model", offline)
    with pytest.raises(DownloadError, match="passt-s-f128-p16-s16-ap.468.pt"):
        build_passt(encoders.PAPER_PASST, 10.0)


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory):
    """A local folder holding a 2-layer DistilBERT with random weights (no download) and MiniLM's tokenizer."""
    from transformers import AutoModel, AutoTokenizer, DistilBertConfig

    folder = tmp_path_factory.mktemp("tiny_distilbert")
    tokenizer = AutoTokenizer.from_pretrained(encoders.resolve_text_model(encoders.PACKAGED_MINILM))
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_non_bert_text_encoder_trains_whole_or_is_refused_by_name(tiny_distilbert):
    whole = TextEncoder(tiny_distilbert, trainable_layers=-1)
    assert all(p.requires_grad for p in whole.model.parameters()) and not whole.bottom_frozen
    with torch.no_grad():
        assert whole(["a dog barks"]).shape == (1, 32)
    with pytest.raises(ConfigError, match="DistilBertModel.*text_trainable_layers=-1"):
        TextEncoder(tiny_distilbert, trainable_layers=1)


def test_text_dropout_reaches_every_family(tiny_distilbert):
    """The text dropout of method §4 under each family's own names (DistilBERT: dropout, attention_dropout)."""
    encoder = TextEncoder(tiny_distilbert, dropout=0.3, trainable_layers=-1)
    assert encoder.model.config.dropout == encoder.model.config.attention_dropout == 0.3
    assert encoder.model.transformer.layer[0].attention.dropout.p == 0.3
    from transformers import GPT2Config

    gpt2 = with_dropout(GPT2Config(), 0.3)
    assert gpt2.resid_pdrop == gpt2.attn_pdrop == gpt2.embd_pdrop == 0.3
    with pytest.raises(ConfigError, match="text_dropout cannot be applied"):
        with_dropout(type("OddConfig", (), {})(), 0.3)


def test_transformer_layers_knows_the_bert_layout_only(minilm):
    from transformers import GPT2Config, GPT2Model

    assert transformer_layers(minilm.model) is minilm.model.encoder.layer
    gpt2 = GPT2Model(GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="GPT2Model.*text_trainable_layers"):
        transformer_layers(gpt2)


def test_frozen_text_states_are_keyed_by_the_frozen_modules_weights(minilm, monkeypatch):
    """Only a change in the embeddings or the frozen layers recomputes the memoised states."""
    from salsa_lib.stages import step_cache

    monkeypatch.setattr(step_cache, "_TEXT", {})
    calls = []
    real = minilm.frozen_states
    monkeypatch.setattr(minilm, "frozen_states", lambda captions: calls.append(captions) or real(captions))
    layers = minilm.model.encoder.layer
    saved = {k: layers[k].output.dense.bias.detach().clone() for k in (3, 5)}
    first = step_cache.frozen_text_states(minilm, ["rain on a roof"])
    try:
        with torch.no_grad():
            layers[5].output.dense.bias += 1  # a layer that trains: the memoised states stay valid
            assert step_cache.frozen_text_states(minilm, ["rain on a roof"])[0] is first[0] and len(calls) == 1
            layers[3].output.dense.bias += 1  # a frozen layer: computed again
            changed = step_cache.frozen_text_states(minilm, ["rain on a roof"])
    finally:
        with torch.no_grad():
            for k, bias in saved.items():
                layers[k].output.dense.bias.copy_(bias)
    assert len(calls) == 2 and not torch.allclose(changed[0], first[0])


def test_text_encoder_first_token_of_preprocessed_caption(minilm):
    with torch.no_grad():
        a, b = minilm(["A DOG, barks!"]), minilm(["a dog barks"])
        tokens = minilm.tokenizer(["a dog barks"], padding="max_length", max_length=32, return_tensors="pt")
        direct = minilm.model(**tokens).last_hidden_state[:, 0]
    assert torch.allclose(a, b) and torch.allclose(b, direct, atol=1e-6)
    assert a.shape == (1, 384)


def test_text_encoder_trains_only_top_layers(minilm):
    layers = minilm.model.encoder.layer
    assert not any(p.requires_grad for p in minilm.model.embeddings.parameters())
    assert [all(p.requires_grad for p in layer.parameters()) for layer in layers] == [False] * 4 + [True] * 2
    assert minilm.model.config.hidden_dropout_prob == 0.2 and minilm.model.config.attention_probs_dropout_prob == 0.2


def test_text_encoder_bad_names():
    with pytest.raises(ConfigError, match="trainable_layers=7"):
        TextEncoder(encoders.PACKAGED_MINILM, trainable_layers=7)
    with pytest.raises(ConfigError, match="does not exist"):
        TextEncoder("./no/such/model")


def test_dual_encoder_unit_norm_and_fixed_tau(small_audio_encoder, minilm):
    from salsa_lib.core.model import DualEncoder

    model = DualEncoder(small_audio_encoder, minilm, embed_dim=16, tau=0.05).eval()
    with torch.no_grad():
        a = model.embed_audio(torch.randn(2, 32000), torch.ones(2))
        c = model.embed_text(["rain", "a siren wails"])
        logits = model.logits(a, c)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2)) and torch.allclose(c.norm(dim=-1), torch.ones(2))
    assert torch.allclose(logits, (a @ c.T) * 20)
    assert "tau" in model.state_dict() and not any(p is model.tau for p in model.parameters())
    assert set(model.parameter_groups()) == {"audio_encoder", "text_encoder", "audio_projection", "text_projection"}


def test_stored_power_gives_the_mel_front_end_of_hear21passt(small_audio_encoder):
    """AudioEncoder.power + log_mel reproduce AugmentMelSTFT, the random fmin/fmax jitter included."""
    torch.manual_seed(3)
    audio = torch.randn(3, 32000) * 0.1
    encoder = small_audio_encoder
    power = encoder.power(audio)
    assert power.shape == (3, 1, 513, 100)  # pre-emphasis drops a sample: 100 frames per second
    for training in (False, True):
        encoder.mel.train(training)
        torch.manual_seed(7)
        reference = encoder.mel(audio)
        torch.manual_seed(7)  # the same draws of fmin and fmax
        ours = encoder.log_mel(power.flatten(0, 1))
        assert torch.allclose(ours, reference, atol=1e-4), training
    encoder.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        assert torch.allclose(encoder(audio, torch.ones(3)), encoder(None, torch.ones(3), power=power), atol=1e-6)


def test_dynamic_padding_and_stored_frozen_states_change_no_embedding(minilm):
    captions = ["A dog barks.", "A loud siren wails slowly at first while rain falls in the background."]
    with torch.no_grad():
        tokens = minilm.tokenizer([c.lower().replace(".", "") for c in captions], padding="max_length",
                                  truncation=True, max_length=32, return_tensors="pt")
        padded = minilm.model(**tokens).last_hidden_state[:, 0]
        ours = minilm(captions)
        states = minilm.frozen_states(captions)
        assert [len(s) for s in states] == minilm.tokenize(captions)["attention_mask"].sum(1).tolist()
        from_states = minilm.forward_from_states(states[::-1])  # any batch order and padding
    assert minilm.n_frozen == 4 and minilm.bottom_frozen
    assert torch.allclose(ours, padded, atol=1e-5)
    assert torch.allclose(from_states, ours.flip(0), atol=1e-5)


def test_step_cache_stores_the_padded_clips_spectrograms(tiny_home):
    from salsa_lib.data import data_sources
    from salsa_lib.stages.step_cache import spectrograms

    split = data_sources.load_splits(data_sources.load_data_config("test"), ("val",), progress=False)["val"]
    encoder = AudioEncoder(build_passt("passt_small", 1.0, width=32, depth=1, heads=2), 1.0)
    power = spectrograms(encoder, split, 40000, max_bytes=2**30)  # 1.25 s: every clip is padded
    waves = torch.zeros(split.n_clips, 40000)
    for i in range(split.n_clips):
        waves[i, :len(split.audio[i])] = torch.from_numpy(split.audio[i])
    assert torch.allclose(power, encoder.power(waves))
    assert spectrograms(encoder, split, 16000, max_bytes=2**30) is None  # shorter than the clips: random crops
    # beyond the limit (the paper's ClothoV2, and its dry run with the limit at 0) the STFT runs every step
    assert spectrograms(encoder, split, 40000, max_bytes=power.numel() * 4 - 1) is None
    assert spectrograms(encoder, split, 40000, max_bytes=0) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loud_high_tones_give_the_fp32_log_mels_under_autocast(small_audio_encoder, dtype):
    """In fp16, a full-scale tone at 6-12 kHz has mel energies above 65504: the front end must stay in fp32."""
    seconds = torch.arange(32000) / 32000
    audio = torch.stack([torch.sin(2 * torch.pi * f * seconds) for f in (6000.0, 9000.0, 12000.0)])
    encoder = small_audio_encoder.train()  # the training front end: fmin/fmax jitter on
    try:
        torch.manual_seed(5)
        reference = encoder.log_mel(encoder.power(audio).flatten(0, 1))
        assert reference.dtype == torch.float32 and torch.isfinite(reference).all()
        stored = encoder.power(audio)  # the step cache computes the spectrograms outside autocast
        with torch.autocast("cpu", dtype=dtype):
            torch.manual_seed(5)
            per_step = encoder.log_mel(encoder.power(audio).flatten(0, 1))
            torch.manual_seed(5)
            cached = encoder.log_mel(stored.flatten(0, 1))
    finally:
        encoder.eval()
    for log_mel in (per_step, cached):
        assert torch.isfinite(log_mel).all()
        assert torch.allclose(log_mel.float(), reference, atol=1e-5)
        assert log_mel.dtype == torch.float32


OFFLINE_SCRIPT = """
import json, os, socket, sys

def refuse(*args, **kwargs):
    raise OSError("no network in this test")

socket.socket.connect = refuse  # any download attempt fails at once
import salsa_lib.core.released, salsa_lib.search.cli, salsa_lib.search.demo  # noqa: E401
cache = os.environ["HF_HOME"]
imported_clean = not os.path.exists(cache) or not any(files for _, _, files in os.walk(cache))
from salsa_lib.core.encoders import TextEncoder
from salsa_lib.errors import DownloadError
messages = {}
for pretrained in (True, False):
    try:
        TextEncoder("roberta-large", pretrained=pretrained)
    except DownloadError as err:
        messages[str(pretrained)] = str(err)
print(json.dumps({"imported_clean": imported_clean, "messages": messages}))
"""


def test_offline_without_the_text_model_the_error_says_what_where_and_how(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty cache: importing downloads nothing, and building roberta-large names the
    missing parts, the cache folder it looked in, and how to give a local folder instead."""
    import json
    import os
    import subprocess
    import sys

    home = tmp_path / "hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "SALSA_HOME": str(tmp_path / "salsa")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    out = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["imported_clean"]  # nothing fetched or cached at import time
    full, architecture_only = report["messages"]["True"], report["messages"]["False"]
    for message in (full, architecture_only):
        assert "'roberta-large'" in message and "HF_HUB_OFFLINE" in message
        assert str(home / "hub") in message  # where it was looked for
        assert "Missing from the Hugging Face cache" in message
        assert "configuration (config.json) and tokenizer (tokenizer.json, or vocab.json and merges.txt" in message
        assert "local folder" in message and "-p text_encoder FOLDER" in message and "--text-encoder FOLDER" in message
    assert "and weights (model.safetensors, or pytorch_model.bin)" in full
    assert "weights" not in architecture_only  # built from the configuration, the weights are never needed


def test_a_local_text_encoder_folder_without_the_files_is_named(tmp_path):
    with pytest.raises(ConfigError, match="could not be loaded.*config.json") as err:
        TextEncoder(str(tmp_path))
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("family", ["mobilenet_small", "frames_small"])
def test_the_other_families_embed_windows_like_passt(family):
    """Same input, same output shape as the small PaSST; a clip's embedding is the mean over the windows
    that hold audio, and a padded window changes nothing (the masked mean)."""
    from salsa_lib.core.encoders import build_audio_encoder

    torch.manual_seed(0)
    encoder = build_audio_encoder(family, 1.0, width=32, depth=1, heads=2).eval()
    assert encoder.passt is None and encoder.trunk is encoder.backbone and encoder.dim == 32
    audio = torch.randn(2, 32000) * 0.1
    one = encoder(audio, torch.ones(2))
    assert one.shape == (2, 32) and torch.isfinite(one).all()
    padded = torch.cat([audio, torch.zeros(2, 32000)], dim=1)  # a second, empty window
    torch.testing.assert_close(encoder(padded, torch.full((2,), 0.5)), one)
    two = encoder(torch.cat([audio, audio.flip(0)], dim=1), torch.ones(2))
    torch.testing.assert_close(two, (one + one.flip(0)) / 2, rtol=1e-4, atol=1e-5)
    assert not any(k.startswith("passt.") for k in encoder.state_dict())


def test_small_audio_encoder_names_are_declared_once():
    from salsa_lib.config import SMALL_AUDIO_ENCODERS
    from salsa_lib.core import audio_families
    from salsa_lib.core.encoders import AUDIO_ENCODERS, SMALL_PASST

    assert (SMALL_PASST, *audio_families.FAMILIES) == SMALL_AUDIO_ENCODERS
    assert set(SMALL_AUDIO_ENCODERS) < set(AUDIO_ENCODERS)
