"""A stand-in for a trained model whose audio embedding reveals one kind of event: high-pitched sound.

The embedding of a window is (share of its energy above ~2 kHz, 0.05, 0): a window holding a whistle
points along the first axis, hum and silence along the second. A query for the whistle is the vector (1, 0, 0).
Search code sees the DualEncoder interface it uses, without PaSST's cost, so the hour-long
recording tests stay fast and know exactly which moment must win.
"""

import torch
import torch.nn.functional as F
from torch import nn

WINDOW_SECONDS = 10.0


class _Encoder(nn.Module):
    window_samples = int(WINDOW_SECONDS * 32000)


class StubModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_encoder = _Encoder()
        self.project_audio = nn.Linear(3, 3)  # only its out_features is read
        self.windows_seen = 0

    def embed_audio(self, audio: torch.Tensor, audio_length: torch.Tensor) -> torch.Tensor:
        self.windows_seen += len(audio)
        high = (audio[:, 1:] - audio[:, :-1]).pow(2).mean(1)  # first difference: a crude high-pass
        share = high / (audio.pow(2).mean(1) * 4 + 1e-9)
        return F.normalize(torch.stack([share, torch.full_like(share, 0.05), torch.zeros_like(share)], 1), dim=1)


if __name__ == "__main__":  # a second indexing process for the lock test: python search_stub.py FOLDER
    import json
    import sys

    from salsa_lib.search import retrieval

    index = retrieval.build_index(sys.argv[1], StubModel(), "stub", progress=False)
    print(json.dumps({"stats": index.stats, "files": len(index), "notes": index.notes}))
