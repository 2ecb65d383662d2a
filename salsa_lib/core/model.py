"""The dual encoder: audio and caption embeddings in one space, compared by cosine / tau (method §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from salsa_lib.core.encoders import AudioEncoder, TextEncoder, build_audio_encoder
from salsa_lib.quiet import silence_third_party_noise


class DualEncoder(nn.Module):
    """An audio encoder (PaSST, or another family) + text transformer, one linear projection each,
    L2-normalised, fixed temperature."""

    def __init__(self, audio: AudioEncoder, text: TextEncoder, embed_dim: int = 1024, tau: float = 0.05):
        super().__init__()
        self.audio_encoder, self.text_encoder = audio, text
        self.project_audio = nn.Linear(audio.dim, embed_dim)
        self.project_text = nn.Linear(text.dim, embed_dim)
        # tau is fixed at 0.05 in the paper (freeze_tau); a buffer keeps it in checkpoints, out of optimisers
        self.register_buffer("tau", torch.tensor(float(tau)))

    def embed_audio(self, audio: torch.Tensor, audio_length: torch.Tensor, power: torch.Tensor | None = None) -> torch.Tensor:
        """``power``: the audio's stored power spectrograms (``AudioEncoder.power``), if the caller has them."""
        return F.normalize(self.project_audio(self.audio_encoder(audio, audio_length, power)), dim=-1)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        return F.normalize(self.project_text(self.text_encoder(captions)), dim=-1)

    def logits(self, audio_embeddings: torch.Tensor, caption_embeddings: torch.Tensor) -> torch.Tensor:
        """S = C / tau with C[i, j] = cos(audio_i, caption_j), in fp32 under any autocast: at |S| ~ 20
        fp16 resolves steps of ~0.016, and the original computes these logits in fp32 too."""
        with torch.autocast(audio_embeddings.device.type, enabled=False):
            return audio_embeddings.float() @ caption_embeddings.float().T / self.tau.float()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The paper's four learning-rate groups (method §8)."""
        groups = {"audio_encoder": self.audio_encoder, "text_encoder": self.text_encoder,
                  "audio_projection": self.project_audio, "text_projection": self.project_text}
        return {name: [p for p in module.parameters() if p.requires_grad] for name, module in groups.items()}


def build_dual_encoder(config, pretrained_text: bool = True) -> DualEncoder:
    """From a Stage1Config (or anything with its model fields). ``pretrained_text=False`` builds the text
    model from its configuration with random weights, for a checkpoint whose weights fill it anyway."""
    silence_third_party_noise()
    audio = build_audio_encoder(config.audio_encoder, config.window_seconds, width=config.passt_width,
                                depth=config.passt_depth, heads=config.passt_heads, pretrained=config.pretrained_audio)
    text = TextEncoder(config.text_encoder, max_length=config.text_max_length, dropout=config.text_dropout,
                       trainable_layers=config.text_trainable_layers, pretrained=pretrained_text)
    return DualEncoder(audio, text, embed_dim=config.embed_dim, tau=config.tau)
