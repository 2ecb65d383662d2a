"""A fake of the authors' released checkpoint: a tiny DualEncoder's weights saved under the names and in the
layout of the authors' Lightning module, written out here as data (never taken from the loader's rules).

Shared by the loader's tests (tests/core) and the search and demo tests (tests/search).
"""

import torch

from salsa_lib.config import Stage1Config

# the paper's layout at shapes a test can afford: a 1 s window, a one-layer PaSST, 32-d embeddings
TINY = Stage1Config(passt_width=64, passt_depth=1, passt_heads=2, embed_dim=32, window_seconds=1.0,
                    train_seconds=1.0, eval_seconds=1.0)

# our name -> the name in the authors' Lightning module (written out here, not taken from the module)
LAYOUT = [("audio_encoder.passt.", "audio_embedding_model.model.model."),
          ("text_encoder.model.", "sentence_embedding_model."),
          ("project_audio.", "project_audio.0."),
          ("project_text.", "project_sentence.0.")]
EXTRAS = {"timing_tau": torch.tensor(0.05), "audio_token": torch.zeros(1, 1, 8), "posencode.pe": torch.zeros(10, 8),
          "sentence_embedding_model.embeddings.position_ids": torch.arange(512)[None]}


def to_released(state_dict):
    released = {}
    for key, value in state_dict.items():
        if key == "tau":
            released["tau"] = value.reshape(1)  # stored as a (1,) parameter: the loader must accept it
            continue
        ours, theirs = next((o, t) for o, t in LAYOUT if key.startswith(o))
        released[theirs + key[len(ours):]] = value.clone()
    return released


def released_state(model):
    """``model``'s weights as the release stores them, with its extras and the mel buffers older hear21passt saved."""
    state = to_released(model.state_dict())
    state.update(EXTRAS)
    for name, buffer in model.audio_encoder.mel.named_buffers():
        state[f"audio_embedding_model.model.model.mel.{name}"] = buffer.clone()
    return state


def save(folder, state_dict, hyper_parameters=None, name="passt_roberta.ckpt"):
    path = folder / name
    torch.save({"state_dict": state_dict, "epoch": 3,
                "hyper_parameters": hyper_parameters or {"lr": 2e-5, "tau": 0.05}}, path)
    return path
