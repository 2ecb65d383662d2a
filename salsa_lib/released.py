"""The authors' released checkpoint (passt_roberta.ckpt) loaded onto our DualEncoder.

The release is a PyTorch Lightning checkpoint of the authors' own module, so its weights carry
their module names. We rename them onto ours instead of rebuilding their module: the evaluation
then runs through exactly the code our own models use. Every key is accounted for (used, known to
be unused, or reported), so a different release or a wrong config fails loudly, never half-loads.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from salsa_lib.config import PROFILES
from salsa_lib.errors import ConfigError
from salsa_lib.paths import data_dir

# The paper's architecture; no pretrained PaSST download, since every weight comes from the checkpoint.
RELEASED_CONFIG = PROFILES["clotho"].stage1.replace(pretrained_audio=False)

# released prefix -> our prefix (first match wins, so the more specific prefixes come first)
RENAMES = (
    ("audio_embedding_model.model.model.", "audio_encoder.passt."),
    ("sentence_embedding_model.", "text_encoder.model."),
    ("project_audio.0.", "project_audio."),
    ("project_sentence.0.", "project_text."),
)
MEL_PREFIX = "audio_embedding_model.model.model.mel."  # the front end: constants we rebuild
UNUSED_MODULES = {"timing_tau", "audio_token", "audio_output_projection", "posencode", "audio_sequence"}
# a constant arange that older transformers versions saved; ours rebuilds it
IGNORED_KEYS = {"sentence_embedding_model.embeddings.position_ids"}
# ours that may be absent: the AudioSet heads are unused (the embedding is taken before them)
OPTIONAL_PREFIXES = ("audio_encoder.passt.head.", "audio_encoder.passt.head_dist.",
                     "text_encoder.model.embeddings.position_ids")


def default_checkpoint_path() -> Path:
    """Where the README tells users to put the download (follows SALSA_HOME)."""
    return data_dir() / "checkpoints" / "passt_roberta.ckpt"


def _translate(state_dict: Mapping[str, torch.Tensor]):
    """(our weights, our name -> released name, unrecognised released names, mel buffers)."""
    weights, origin, unknown, mel = {}, {}, [], {}
    for key, value in state_dict.items():
        if key.startswith(MEL_PREFIX):
            mel[key] = value
        elif key in IGNORED_KEYS or key.split(".")[0] in UNUSED_MODULES:
            continue
        elif key == "tau":  # a Lightning scalar may be stored with shape (1,); ours is a 0-d buffer
            weights["tau"], origin["tau"] = value.reshape(()) if value.numel() == 1 else value, key
        else:
            rule = next((rule for rule in RENAMES if key.startswith(rule[0])), None)
            if rule is None:
                unknown.append(key)
                continue
            ours = rule[1] + key[len(rule[0]):]
            weights[ours], origin[ours] = value, key
    return weights, origin, sorted(unknown), mel


def _check_mel_buffers(mel: Mapping[str, torch.Tensor]) -> None:
    """The front end is rebuilt from fixed settings, so saved buffers must equal ours: a
    difference would mean the model was trained on other spectrograms than we would feed it."""
    from salsa_lib.encoders import mel_frontend

    ours = dict(mel_frontend().named_buffers())
    for key, value in sorted(mel.items()):
        reference = ours.get(key[len(MEL_PREFIX):])
        if reference is None:
            continue  # a buffer our hear21passt version computes on the fly
        if value.shape != reference.shape or not torch.allclose(value.float(), reference, atol=1e-3):
            raise ConfigError(f"mel front-end buffer {key} {tuple(value.shape)} differs from ours "
                              f"{tuple(reference.shape)}: the checkpoint used other spectrogram settings")


def map_released_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released weights under our module names; ConfigError lists keys it does not recognise."""
    weights, _, unknown, mel = _translate(state_dict)
    if unknown:
        raise ConfigError(f"unrecognised key(s) in the released state dict: {unknown}")
    _check_mel_buffers(mel)
    return weights


def _released_name(ours: str) -> str:
    return next((theirs + ours[len(mine):] for theirs, mine in RENAMES if ours.startswith(mine)), ours)


def _read(path: str | Path, trust_pickle: bool) -> dict[str, Any]:
    """torch.load, safe by default: weights_only refuses to run code hidden in the pickle."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"released checkpoint {path} does not exist: download passt_roberta.ckpt from the SALSA "
            f"authors' release (the download instructions in their README) and place it at "
            f"data/checkpoints/passt_roberta.ckpt (here: {default_checkpoint_path()})")
    if not zipfile.is_zipfile(path):  # torch.save (and Lightning) write zip archives
        raise ConfigError(f"{path} is not a PyTorch checkpoint (not a zip archive); is the download complete?")
    try:
        # mmap: a Lightning file may also hold optimiser states; only the tensors we touch are read
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except (RuntimeError, EOFError) as err:
        raise ConfigError(f"{path} could not be read as a PyTorch checkpoint ({err})") from err
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise ConfigError(
            f"{path} contains pickled Python objects{f' ({found.group(1)})' if found else ''}, which a "
            "safe load (weights_only=True) refuses because unpickling them can run arbitrary code. "
            "If the file comes from a source you trust (the authors' release), pass trust_pickle=True "
            "to load it with weights_only=False.") from err
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ConfigError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return checkpoint


def _check_fit(model: torch.nn.Module, weights, origin, unknown, path) -> None:
    """Every problem at once, by name: load_state_dict would stop at the first shape mismatch."""
    expected = model.state_dict()
    unexpected = sorted(unknown + [origin[k] for k in weights if k not in expected])
    missing = [f"{k} (released name {_released_name(k)})" for k in expected
               if k not in weights and not k.startswith(OPTIONAL_PREFIXES)]
    shapes = [f"{k} (released name {origin[k]}): checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"{label}: {items}" for label, items in (
        ("unexpected keys (released names)", unexpected), ("missing keys", missing),
        ("shape mismatches", shapes)) if items]
    if problems:
        raise ConfigError(f"{path} does not fit the configured model; " + "; ".join(problems))


def load_released_checkpoint(path: str | Path, config=RELEASED_CONFIG, *, trust_pickle: bool = False):
    """Our DualEncoder (eval mode) with the released weights; ConfigError on any mismatch."""
    from salsa_lib.model import build_dual_encoder

    weights, origin, unknown, mel = _translate(_read(path, trust_pickle)["state_dict"])
    _check_mel_buffers(mel)
    model = build_dual_encoder(config)
    _check_fit(model, weights, origin, unknown, path)
    model.load_state_dict(weights, strict=False)  # strict=False: only the optional heads may be absent
    return model.eval()


def released_hyperparameters(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The authors' stored training config, for display beside our RELEASED_CONFIG."""
    hyper_parameters = _read(path, trust_pickle).get("hyper_parameters") or {}
    if isinstance(hyper_parameters, Mapping):
        return dict(hyper_parameters)
    return dict(getattr(hyper_parameters, "__dict__", {"hyper_parameters": hyper_parameters}))
