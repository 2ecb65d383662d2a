"""Two more audio-encoder families for the ensemble, in the spirit of the original README's alternatives.

The original README builds its best correspondence estimates from members of other architectures
beside PaSST: EfficientAT's MobileNetV3-based models (a CNN on the mel spectrogram) and ATST-Frame (a
transformer with one token per time frame). Their released weights are AudioSet-trained and out of
reach offline, so the tiny profile builds small members of each family from scratch, pretrains them on
the same synthetic tagging pool as the small PaSST, and trains them with the same stage-1 recipe and
text encoder. Both take the log-mel windows of PaSST's front end, shape (N, 1, 128, frames), and give
one embedding per window, (N, width), so ``AudioEncoder`` pools them over windows as it pools PaSST's.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig

from salsa_lib.config import SMALL_AUDIO_ENCODERS

# MobileNetV3 blocks on the mel spectrogram (as EfficientAT's MN); a transformer over time frames (as ATST-Frame)
SMALL_MOBILENET, SMALL_FRAMES = SMALL_AUDIO_ENCODERS[1:]
N_MELS = 128
FRAME_HOPS = 4  # mel hops (10 ms each) per frame token of SMALL_FRAMES

# (kernel, expanded channels, output channels, squeeze-excitation, activation, stride): the first
# blocks of MobileNetV3-Small's table (Howard et al. 2019, Table 2), enough depth for 5 s windows
MOBILENET_BLOCKS = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
                    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 120, 48, True, "HS", 1))


class MobileNetWindows(nn.Module):
    """A MobileNetV3-style CNN (torchvision's inverted-residual blocks) from a mel window to ``width``.

    The 1-channel spectrogram goes through a strided stem, a 2 x 2 average pool (a quarter of the
    positions: without it a CPU step took about 4 times as long, for a member of the small kind) and
    the blocks above; a 1x1 convolution widens the map to ``width`` channels, averaged over frequency
    and time.
    """

    def __init__(self, width: int):
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        stem = 16
        layers = [nn.Conv2d(1, stem, 3, stride=2, padding=1, bias=False), norm(stem), nn.Hardswish(), nn.AvgPool2d(2)]
        channels = stem
        for kernel, expanded, out, se, activation, stride in MOBILENET_BLOCKS:
            layers.append(InvertedResidual(InvertedResidualConfig(channels, kernel, expanded, out, se, activation,
                                                                  stride, 1, 1.0), norm))
            channels = out
        layers += [nn.Conv2d(channels, width, 1, bias=False), norm(width), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.embed_dim = width

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features(mel).mean(dim=(2, 3))


class FrameTransformerWindows(nn.Module):
    """A transformer over time frames of the window, one token per frame, mean-pooled to ``width``.

    A frame is ``FRAME_HOPS`` mel hops (40 ms): its 4 x 128 mel values are projected to one token (a
    token per 10 ms hop would give 2.5 times the small PaSST's tokens and a step twice as long), a
    learnt position is added, and pre-norm transformer layers mix the frames; the window embedding
    is the mean of the frame tokens. Frequency is never split into patches, unlike PaSST.
    """

    def __init__(self, frames: int, width: int, depth: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.to_token = nn.Linear(FRAME_HOPS * N_MELS, width)
        self.position = nn.Parameter(torch.zeros(1, -(-frames // FRAME_HOPS), width))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.embed_dim = width

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        mel = mel.squeeze(1).transpose(1, 2)  # (N, hops, mels)
        mel = nn.functional.pad(mel, (0, 0, 0, -mel.shape[1] % FRAME_HOPS))  # whole frames
        tokens = self.to_token(mel.reshape(mel.shape[0], -1, FRAME_HOPS * N_MELS))  # (N, frames, width)
        tokens = tokens + self.position[:, : tokens.shape[1]]
        return self.norm(self.layers(tokens)).mean(dim=1)


FAMILIES = (SMALL_MOBILENET, SMALL_FRAMES)


def build_window_backbone(family: str, frames: int, width: int, depth: int, heads: int) -> nn.Module:
    """One of ``FAMILIES`` for windows of ``frames`` mel frames; sizes as the small PaSST's (width, depth, heads)."""
    if family == SMALL_MOBILENET:
        return MobileNetWindows(width)
    if family == SMALL_FRAMES:
        return FrameTransformerWindows(frames, width, depth, heads)
    raise ValueError(f"unknown audio-encoder family {family!r}; choose one of {FAMILIES}")
