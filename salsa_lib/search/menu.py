"""The demo's model menu: the profile's trained models, SALSA first, and the authors' released model when
its file is present, each described in words; and what the profile's own models can be trusted with.

Models are chosen by validation, never by test scores. The released model's figures are the ones the
original README reports (``salsa_lib/reference/paper_results.csv``), not measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from salsa_lib import runs
from salsa_lib.core import released
from salsa_lib.data import data_sources
from salsa_lib.errors import ConfigError

SALSA_TEACHERS = runs.SALSA_KINDS
TEACHERS_IN_WORDS = {"ensemble": "SALSA: distilled from the estimated correspondences of the stage-1 members of "
                                 "its own architecture",
                     "mixed": "SALSA: distilled from the estimated correspondences of the stage-1 members of "
                              "every architecture",
                     "self": "SALSA: distilled from its own initial member's estimated correspondences",
                     "truth": "not SALSA: distilled from the synthetic set's known correspondences (a ceiling)",
                     "control": "not SALSA: the contrastive loss again, for as long (the control)"}
RELEASED_ENTRY = "released: passt_roberta.ckpt"
PUBLISHED = Path(__file__).resolve().parent.parent / "reference" / "paper_results.csv"


def _record(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint).parent.parent / runs.RECORD).read_text())


def available_models(profile: str, released_checkpoint: Path | None = None) -> dict[str, Path]:
    """Best checkpoints of the profile's trained models, the demo's default first: SALSA students
    (stage 2 on estimated correspondences) by validation mAP@10, then the other stage-2 runs, then the
    stage-1 members (each group by validation mAP@10); last, the authors' released model when its file
    exists (``released_checkpoint``, default data/checkpoints/passt_roberta.ckpt)."""
    def order(entry: dict) -> tuple:
        record = _record(entry["checkpoint"])
        teachers = record["run"].get("teachers") if entry["stage"] == 2 else None
        group = 0 if teachers in SALSA_TEACHERS else 1 if entry["stage"] == 2 else 2
        return group, -record["val"]["mAP@10"], entry["model"]

    entries = sorted(runs.trained_models(profile), key=order)
    models = {f"stage {e['stage']}: {e['model']}": Path(e["checkpoint"]) for e in entries}
    path = Path(released_checkpoint) if released_checkpoint else released.default_checkpoint_path()
    if path.is_file():
        models[RELEASED_ENTRY] = path
    return models


def choose_model(models: dict[str, Path], name: str = "") -> str:
    """``name`` from the menu, or the default (the first) when empty; a clear error for anything else."""
    if not models:
        raise ConfigError("no trained model yet: run notebooks 01 (and 03) first, or place the authors' "
                          f"passt_roberta.ckpt at {released.default_checkpoint_path()}")
    if name and name not in models:
        raise ConfigError(f"model={name!r} is not in the menu: {', '.join(models)}")
    return name or next(iter(models))


def describe_released() -> str:
    """The released model in words, with the figures the original README reports for it."""
    row = pd.read_csv(PUBLISHED).set_index("stage").loc["released"]
    return (f"the authors' released SALSA model, PaSST-S + RoBERTa-large (their DCASE 2024 model); the original "
            f"README reports {row['mAP@10']:.2f} % mAP@10, R@1 {row['R@1']:.2f} %, R@10 {row['R@10']:.2f} % on the "
            f"{row['split']} split (text to audio; not measured here)")


def describe_model(checkpoint: Path) -> str:
    """What a model of the menu is, in words, with the validation score it was chosen by."""
    if released.is_released_checkpoint(checkpoint):
        return describe_released()
    record = _record(checkpoint)
    teachers = record["run"].get("teachers")
    what = (TEACHERS_IN_WORDS.get(teachers, f"stage 2 with {teachers} teachers") +
            f", started from member{record['run']['init_member']}" if teachers else
            "stage 1: the contrastive loss with i = j labels (a teacher, not SALSA's final model)")
    return f"{what}; validation mAP@10 {100 * record['val']['mAP@10']:.1f} % (best epoch {record['best_epoch']})"


def menu_text(models: dict[str, Path], chosen: str) -> str:
    """The menu as a reader scans it: the chosen model first, then every entry (* the chosen) and what it is."""
    lines = [f"model: {chosen}", "menu:"]
    lines += [f"{'*' if name == chosen else ' '} {name}: {describe_model(path)}" for name, path in models.items()]
    return "\n".join(lines)


def model_scope(profile: str) -> str:
    """What the profile's own models can be trusted with, said plainly ('' for real recordings)."""
    data = data_sources.load_data_config(profile)
    if data.dataset == "synthetic":
        return (f"The models of profile {profile!r} were trained on {data.n_train_clips} synthetic clips of "
                f"{data.clip_seconds:g} s: they know only the synthetic sounds, and on real recordings their "
                f"rankings mean nothing. To search real sounds, use the authors' released model: {RELEASED_ENTRY!r} "
                f"in the menu once passt_roberta.ckpt is at {released.default_checkpoint_path()}.")
    if data.dataset == "fake-clotho":
        return (f"Profile {profile!r} is a dry run on generated stand-in audio with random-weight encoders: "
                "its rankings mean nothing.")
    return ""
