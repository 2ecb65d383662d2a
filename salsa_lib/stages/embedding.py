"""Embedding a whole split with one model: what correspondence estimation and evaluation share.

Audio is embedded once per clip (deterministic crop from the start), captions in clip-major order;
both L2-normalised, in eval mode, on the CPU afterwards so callers can hold several models' worth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from salsa_lib.data.splits import ClipDataset, ClothoSplit
from salsa_lib.stages.step_cache import frozen_text_states


@torch.no_grad()
def embed_split(model, split: ClothoSplit, seconds: float, batch_size: int = 32, device: str = "cpu") -> dict:
    """L2-normalised audio (n_clips, D) and caption (5 n_clips, D) embeddings, in eval mode."""
    model = model.eval().to(device)
    audio = [model.embed_audio(b["audio"].to(device), b["audio_length"].to(device)).float().cpu()
             for b in DataLoader(ClipDataset(split, seconds), batch_size=batch_size)]
    captions = [c for clip in split.captions for c in clip]
    if model.text_encoder.bottom_frozen:  # members share the frozen bottom: computed once per process
        states = frozen_text_states(model.text_encoder, captions)
        text = [F.normalize(model.project_text(model.text_encoder.forward_from_states(states[i:i + batch_size])),
                            dim=-1).float().cpu() for i in range(0, len(captions), batch_size)]
    else:
        text = [model.embed_text(captions[i:i + batch_size]).float().cpu() for i in range(0, len(captions), batch_size)]
    return {"audio": torch.cat(audio), "captions": torch.cat(text)}


def torch_device(accelerator: str) -> str:
    """The torch device for forward passes under a config's ``accelerator`` (Lightning's names)."""
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return {"gpu": "cuda"}.get(accelerator, accelerator)
