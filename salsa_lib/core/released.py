"""The authors' released checkpoint (passt_roberta.ckpt) loaded onto our DualEncoder.

The release is a PyTorch Lightning checkpoint of the authors' own module, so its weights carry
their module names. We rename them onto ours instead of rebuilding their module: the evaluation
then runs through exactly the code our own models use. Every key is accounted for (used, known to
be unused, or reported), so a different release or a wrong config fails loudly, never half-loads.

It is model code, below the search layer: ``is_released_checkpoint`` tells the authors' file from one
of ours by its content (the names its weights carry), so search, the demo and notebook 04 all load
it here. The text encoder is built from roberta-large's configuration and tokenizer only: every
weight comes from the checkpoint, so its 1.4 GB of pretrained weights are never fetched.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from salsa_lib.core.encoders import mel_frontend
from salsa_lib.core.model import DualEncoder, build_dual_encoder
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.paths import data_dir
from salsa_lib.profiles import PROFILES

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
UNUSED_MODULES = {"timing_tau", "audio_token", "posencode"}
# the optional sequence model and its output head: with the paper's sequence_model.num_layers=0 they hold no
# weights, so weights under these names mean a different architecture, which our model would silently drop
FOREIGN_MODULES = {"audio_sequence", "audio_output_projection"}
# a constant arange that older transformers versions saved; ours rebuilds it
IGNORED_KEYS = {"sentence_embedding_model.embeddings.position_ids"}
# ours that may be absent: the AudioSet heads are unused (the embedding is taken before them)
OPTIONAL_PREFIXES = ("audio_encoder.passt.head.", "audio_encoder.passt.head_dist.",
                     "text_encoder.model.embeddings.position_ids")


def default_checkpoint_path() -> Path:
    """Where the README tells users to put the download (follows SALSA_HOME)."""
    return data_dir() / "checkpoints" / "passt_roberta.ckpt"


def is_released_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds weights under the authors' module names: the strings of the pickle inside
    the checkpoint's zip archive are read as opcodes, nothing is unpickled (so nothing in it runs).
    A missing or unreadable file answers False, and the loader of our own checkpoints names the problem."""
    prefixes = tuple(theirs for theirs, _ in RENAMES)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
            for _, argument, _ in pickletools.genops(archive.read(name)):
                if isinstance(argument, str) and argument.startswith(prefixes):
                    return True
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError):
        return False
    return False


def _translate(state_dict: Mapping[str, torch.Tensor]):
    """(our weights, our name -> released name, unrecognised released names, mel buffers)."""
    foreign = sorted(k for k in state_dict if k.split(".")[0] in FOREIGN_MODULES)
    if foreign:
        raise ConfigError(f"the checkpoint has weights of a sequence model that the paper's architecture "
                          f"(sequence_model.num_layers=0) does not have, so it is a different model: {foreign}")
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConfigError(f"state_dict entries that are not tensors: {not_tensors}")
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
    ours = dict(mel_frontend().named_buffers())
    for key, value in sorted(mel.items()):
        reference = ours.get(key[len(MEL_PREFIX):])
        if reference is None:
            continue  # a buffer our hear21passt version computes on the fly
        if value.shape != reference.shape or not torch.allclose(value.float(), reference, atol=1e-3):
            raise ConfigError(f"mel front-end buffer {key} {tuple(value.shape)} differs from ours "
                              f"{tuple(reference.shape)}: the checkpoint used other spectrogram settings")


def _released_name(ours: str) -> str:
    return next((theirs + ours[len(mine):] for theirs, mine in RENAMES if ours.startswith(mine)), ours)


class Opaque(dict):
    """Stands in for a pickled object whose class is not imported: its arguments and state are kept as
    data, nothing of it runs. A dict, because Lightning's hparams containers are dict subclasses.

    The arguments matter: sacred's ReadOnlyDict (the original's nested config) pickles as
    ``ReadOnlyDict(plain_dict)``, so its settings exist only in ``opaque_args``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.opaque_args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.opaque_state = state


_MAX_STAND_INS = 64
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not")


def _safe_load(path: Path) -> tuple[Any, list[str]]:
    """torch.load(weights_only=True), with each refused global replaced by an inert ``Opaque`` subclass
    (through torch's own allowlist), so pickled configuration objects never block scoring the weights."""
    stand_ins: dict[str, tuple] = {}
    while True:
        try:
            with torch.serialization.safe_globals(list(stand_ins.values())):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True), sorted(stand_ins)
        except pickle.UnpicklingError as err:
            found = _GLOBAL.search(str(err))
            if not found or len(stand_ins) >= _MAX_STAND_INS:
                raise
            name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"
            if name in stand_ins:
                raise
            stand_ins[name] = (type(name.rsplit(".", 1)[-1], (Opaque,), {"__module__": __name__}), name)


def _read(path: str | Path, trust_pickle: bool) -> dict[str, Any]:
    """torch.load, safe by default: weights_only with inert stand-ins, so no code hidden in the pickle runs.

    A missing or broken file is a DataError; pickled objects are a ConfigError, since a setting
    (trust_released_pickle) loads them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"released checkpoint {path} does not exist: download passt_roberta.ckpt from the SALSA "
            f"authors' release (the download instructions in their README) and place it at "
            f"data/checkpoints/passt_roberta.ckpt (here: {default_checkpoint_path()})")
    if not zipfile.is_zipfile(path):  # torch.save (and Lightning) write zip archives
        raise DataError(f"{path} is not a PyTorch checkpoint (not a zip archive); is the download complete?")
    try:
        if trust_pickle:
            checkpoint, stand_ins = torch.load(path, map_location="cpu", weights_only=False, mmap=True), []
        else:
            checkpoint, stand_ins = _safe_load(path)
    except (RuntimeError, EOFError) as err:
        raise DataError(f"{path} could not be read as a PyTorch checkpoint ({err})") from err
    except ImportError as err:  # only a trusted load imports the pickled classes (the original's: sacred's)
        raise ConfigError(f"{path} pickles objects of the module {err.name!r}, which is not installed; load it "
                          "without trust_released_pickle: the safe load reads those objects as data") from err
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "WeightsUnpickler" in line), "")
        raise ConfigError(
            f"{path} holds pickled Python objects that cannot be read as plain data ({detail[:200]}); a safe "
            "load refuses them because unpickling them can run arbitrary code. If the file comes from a "
            "source you trust (the authors' release), pass -p trust_released_pickle true to notebook 04 "
            "(trust_pickle=True in Python, --trust-released-pickle to python -m salsa_lib.search) to load it "
            "with weights_only=False.") from err
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise DataError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return {**checkpoint, "stand_ins": stand_ins}


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


def build_released_model(config=RELEASED_CONFIG) -> DualEncoder:
    """The dual encoder of ``config`` with random weights, for the checkpoint's weights to fill: PaSST and the
    text model are built from their architectures (for roberta-large: its configuration and tokenizer)."""
    return build_dual_encoder(config.replace(pretrained_audio=False), pretrained_text=False)


def load_released_checkpoint(path: str | Path, config=RELEASED_CONFIG, *, trust_pickle: bool = False):
    """Our DualEncoder (eval mode) with the released weights; ConfigError on any mismatch."""
    return _load(path, config, trust_pickle)[0]


def _load(path: str | Path, config, trust_pickle: bool):
    """The model and the settings the checkpoint does not record, from one read of the (GB-sized) file."""
    checkpoint = _read(path, trust_pickle)
    unchecked = _refuse_other_settings(path, checkpoint, config)
    weights, origin, unknown, mel = _translate(checkpoint["state_dict"])
    _check_mel_buffers(mel)
    model = build_released_model(config)
    _check_fit(model, weights, origin, unknown, path)
    model.load_state_dict(weights, strict=False)  # strict=False: only the optional heads may be absent
    return model.eval(), unchecked


def _settings(value: Any) -> dict[str, Any]:
    """What a container holds, in the order unpickling builds it: a stand-in's mapping arguments (the
    object was made from them), then its items, then its attributes."""
    items = {}
    for argument in getattr(value, "opaque_args", ()) if isinstance(value, Opaque) else ():
        if isinstance(argument, Mapping):
            items.update(argument)
    items.update(value if isinstance(value, Mapping) else {})
    items.update({k: v for k, v in getattr(value, "__dict__", {}).items() if k != "opaque_args"})
    return items


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaves, through mappings and through the attributes of objects (stand-ins and
    the mappings they were called with too)."""
    if isinstance(value, Mapping) or hasattr(value, "__dict__") and not isinstance(value, type):
        items = _settings(value)
        out = {}
        for key, item in items.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def expected_hyperparameters(config=RELEASED_CONFIG) -> dict[str, tuple[str, Any]]:
    """What the original code's config keys (method §2.3 and §3–5) must say for our model to be theirs:
    key (its last path components: 'sequence_model.num_layers' needs both) -> (what it is, our value)."""
    return {"aggregate": ("pooling over windows", "mean"), "use_first_token": ("text pooling", True),
            "segment_length": ("window length, s", config.window_seconds),
            "hop_length": ("window hop, s", config.window_seconds),
            "max_sentence_tokens": ("max tokens", config.text_max_length),
            "remove_punctuation": ("caption punctuation removal", True),
            "normalize": ("L2 normalisation of embeddings", True),
            "sequence_model.num_layers": ("sequence layers", 0),
            # True pools PaSST's token sequence instead of (CLS + DIST) / 2; the weights are the same either way
            "model_config.return_sequence": ("window embedding (CLS + DIST) / 2, not the token sequence", False)}


def compare_hyperparameters(hyper_parameters: Mapping[str, Any], config=RELEASED_CONFIG) -> tuple[list[str], list[str]]:
    """(differences, unchecked): every saved value that contradicts ours, named; settings not recorded."""
    flat = _flatten(hyper_parameters)
    differences, unchecked = [], []
    for key, (meaning, ours) in expected_hyperparameters(config).items():
        found = {path: value for path, value in flat.items() if path == key or path.endswith("." + key)}
        if not found:
            unchecked.append(f"{meaning} ({key})")
        for path, value in sorted(found.items()):
            if not (value == ours or isinstance(ours, float) and isinstance(value, (int, float)) and float(value) == ours):
                differences.append(f"{meaning}: the checkpoint says {path}={value!r}, ours is {ours!r}")
    return differences, unchecked


def _refuse_other_settings(path, checkpoint: Mapping[str, Any], config) -> list[str]:
    differences, unchecked = compare_hyperparameters(checkpoint.get("hyper_parameters") or {}, config)
    if differences:
        raise ConfigError(f"{path} was trained with other settings than the model we would score it with: "
                          + "; ".join(differences))
    return unchecked


def check_hyperparameters(path: str | Path, config=RELEASED_CONFIG, trust_pickle: bool = False) -> list[str]:
    """Refuse a checkpoint whose saved settings contradict our model; return the settings it does not record."""
    return _refuse_other_settings(path, _read(path, trust_pickle), config)


def load_for_evaluation(path: str | Path, trust_pickle: bool = False, config=RELEASED_CONFIG) -> tuple[tuple | None, str]:
    """What notebook 04 evaluates beside our models: ``(path, model, config)`` and a line for the reader,
    or ``(None, why)`` when the file is absent (the released checkpoint is optional)."""
    path = Path(path)
    if not path.exists():
        return None, f"released checkpoint not found at {path}: skipped (see README, 'Released checkpoint')"
    model, unchecked = _load(path, config, trust_pickle)
    return (path, model, config), f"settings the checkpoint does not record (not compared): {unchecked or 'none'}"
