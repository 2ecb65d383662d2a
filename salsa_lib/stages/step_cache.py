"""Per-run caches of the work every training step would otherwise repeat on unchanging inputs.

A tiny-profile step spent about as long on the fixed parts of the model as on learning: the STFT of
the same cached clips (the mel front end's random fmin/fmax jitter acts only after it) and the
frozen bottom layers of the text encoder on the same captions. Both are computed once per run here
and looked up by clip and caption index; the result of a step is the same up to float rounding,
except that the frozen text layers run without dropout (the layers that train keep theirs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from salsa_lib.data.splits import ClothoSplit

CHUNK = 32  # clips or captions per forward pass while filling a cache


@dataclass
class StepCache:
    """``power[i]``: clip i's power spectrograms (windows, 513, frames); ``text[j]``: caption j's frozen states."""

    power: torch.Tensor | None
    text: list[torch.Tensor] | None

    @classmethod
    def build(cls, model, split: ClothoSplit, n_samples: int, captions: list[str],
              max_bytes: float, text: bool = True) -> "StepCache | None":
        """Shared within the process: the ensemble members and stage-2 runs of one kernel reuse it.

        ``max_bytes``: the largest spectrogram store worth keeping (beyond it, e.g. ClothoV2 at 30 s,
        the STFT runs every step). ``text``: store the frozen text layers' outputs too (in training
        that drops their dropout; validation runs without dropout anyway).
        """
        key = (str(split.audio.array_path), n_samples, max_bytes)
        if key not in _POWER:
            if len(_POWER) >= 4:  # train and val of one data set in practice; bounded regardless
                _POWER.clear()
            _POWER[key] = spectrograms(model.audio_encoder, split, n_samples, max_bytes)
        text = frozen_text_states(model.text_encoder, captions) if text and model.text_encoder.bottom_frozen else None
        power = _POWER[key]
        return cls(power, text) if power is not None or text is not None else None

    def power_of(self, clip_ids: torch.Tensor, device) -> torch.Tensor | None:
        return None if self.power is None else self.power[clip_ids.cpu()].to(device)

    def text_of(self, caption_ids) -> list[torch.Tensor]:
        return [self.text[int(j)] for j in caption_ids]


_POWER: dict[tuple, torch.Tensor | None] = {}
_TEXT: dict[tuple[str, str], torch.Tensor] = {}


def frozen_text_states(text_encoder, captions: list[str]) -> list[torch.Tensor]:
    """``frozen_states`` of every caption, memoised by the frozen weights' digest and the caption."""
    digest = hashlib.blake2b(digest_size=16)
    for position, module in enumerate(text_encoder.frozen_modules()):
        for name, tensor in module.state_dict().items():
            digest.update(f"{position}.{name}".encode() + tensor.detach().cpu().numpy().tobytes())
    weights = digest.hexdigest()
    missing = list(dict.fromkeys(c for c in captions if (weights, c) not in _TEXT))
    for k in range(0, len(missing), CHUNK):
        chunk = missing[k:k + CHUNK]
        _TEXT.update({(weights, c): s.cpu() for c, s in zip(chunk, text_encoder.frozen_states(chunk))})
    return [_TEXT[weights, c] for c in captions]


def spectrograms(encoder, split: ClothoSplit, n_samples: int, max_bytes: float) -> torch.Tensor | None:
    """Every clip's power spectrograms, zero-padded to ``n_samples`` as the data sets pad them.

    Only when that is what every step sees: no clip is longer than ``n_samples`` (longer clips are
    cropped at random in training) and the cache fits in ``max_bytes``.
    """
    if split.n_clips == 0 or int(np.max(split.audio.lengths)) > n_samples:
        return None
    device = next(encoder.parameters()).device
    probe = encoder.power(torch.zeros(1, n_samples, device=device))
    if probe.numel() * 4 * split.n_clips > max_bytes:
        return None
    out = torch.empty((split.n_clips, *probe.shape[1:]), dtype=torch.float32)
    for start in range(0, split.n_clips, CHUNK):
        waves = np.zeros((min(CHUNK, split.n_clips - start), n_samples), dtype=np.float32)
        for row, i in enumerate(range(start, start + len(waves))):
            clip = split.audio[i]
            waves[row, :len(clip)] = clip
        out[start:start + len(waves)] = encoder.power(torch.from_numpy(waves).to(device)).cpu()
    return out
