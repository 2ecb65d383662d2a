"""The one registry of trained runs of a profile: where each lives and what it is.

Stage 1 writes ``results/<profile>/stage1/member<k>/`` and lists them in ``members.json``; stage 2
writes one folder per run under ``results/<profile>/stage2/``, each with a ``run.json`` record. Stage
2 (its teachers and initial members), evaluation (every model, best and last weights), the verdict
and the demo all find runs here, so none of them imports another stage to learn a folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

from salsa_lib import paths
from salsa_lib.errors import ConfigError, DataError

MEMBERS_LISTING = "members.json"
GRID_LISTING = "grid.json"  # stage 2: the runs of the latest grid (older folders may sit beside them)
RECORD = "run.json"  # every training run's record: its parameters, data fingerprints, metrics
ENSEMBLE_KINDS = ("ensemble", "mixed")  # stage 2's teacher kinds that average several members (``ensembles``)
# stage-2 students of *estimated* correspondences: SALSA itself (truth and control are our yardsticks)
SALSA_KINDS = (*ENSEMBLE_KINDS, "self")
# which weights of a training run are scored, and how metrics.csv names them
WEIGHTS = {"best": "best val mAP@10 (our model selection)",
           "last": "last epoch (what the original script tests after training; method §10.1, §12 item 8)"}


# training fields that say how a run was scheduled on the machine, not what it computes: left out
# of a run's identity, so changing them reuses finished runs
SCHEDULING_FIELDS = ("parallel_runs",)


def identity(params: dict) -> dict:
    """A run's parameters as its identity for reuse and resume (without ``SCHEDULING_FIELDS``)."""
    return {k: v for k, v in params.items() if k not in SCHEDULING_FIELDS}


def stage1_dir(profile: str) -> Path:
    return paths.results_dir(profile) / "stage1"


def member_dir(profile: str, member: int) -> Path:
    return stage1_dir(profile) / f"member{member}"


def stage2_dir(profile: str) -> Path:
    return paths.results_dir(profile) / "stage2"


def checkpoint(folder: Path, weights: str = "best") -> Path:
    return Path(folder) / "checkpoints" / f"{weights}.ckpt"


def member_folders(profile: str, names: list[str] | None = None) -> list[Path]:
    """The stage-1 members listed in members.json (or ``names`` of them); a missing one is an error."""
    listing = stage1_dir(profile) / MEMBERS_LISTING
    if not listing.exists():
        raise ConfigError(f"{listing} is missing: train stage 1 first (notebook 01)")
    listed = json.loads(listing.read_text())["members"]
    chosen = listed if names is None else names
    if not chosen:
        raise ConfigError("the teacher list is empty: name at least one stage-1 member")
    folders = [stage1_dir(profile) / name for name in chosen]
    missing = [f.name for f in folders if f.name not in listed or not checkpoint(f).exists()]
    if missing:
        raise ConfigError(f"stage-1 member(s) {missing} not found under {stage1_dir(profile)} "
                          f"(trained members: {listed})")
    return folders


def member_audio_encoders(profile: str) -> dict[str, str]:
    """Listed stage-1 member -> its audio encoder (family), read from each member's run record."""
    member_folders(profile)  # a missing listing or member is an error here
    return audio_encoders_in(stage1_dir(profile))


def audio_encoders_in(stage1_folder: Path) -> dict[str, str]:
    """``member_audio_encoders`` of a stage-1 folder given by path (a results folder read as files);
    empty where it lists no members."""
    listing = Path(stage1_folder) / MEMBERS_LISTING
    names = json.loads(listing.read_text())["members"] if listing.exists() else []
    return {name: json.loads((Path(stage1_folder) / name / RECORD).read_text())["run"].get("audio_encoder", "passt_small")
            for name in names}


def ensembles(profile: str, student_member: str = "member0") -> dict[str, list[str]]:
    """The members of each ensemble kind: ``ensemble`` holds the members of ``student_member``'s audio
    encoder (one architecture, as a same-architecture ensemble; the student's own member included, as
    in the original), ``mixed`` every member of every family."""
    encoders = member_audio_encoders(profile)
    own = encoders[student_member]
    return {"ensemble": [name for name, family in encoders.items() if family == own], "mixed": list(encoders)}


def trained_models(profile: str, weights: tuple[str, ...] = ("best",)) -> list[dict]:
    """Every trained model of the profile (stage-1 members, then stage-2 runs), once per kind of
    ``weights``: stage, model (folder name), teachers, loss weights, seed, weights and checkpoint."""
    runs = []
    listing = stage1_dir(profile) / MEMBERS_LISTING
    for name in json.loads(listing.read_text())["members"] if listing.exists() else []:
        run = json.loads((stage1_dir(profile) / name / RECORD).read_text())["run"]
        runs.append(({"stage": 1, "model": name, "teachers": "", "sup_weight": 1.0, "distill_weight": 0.0,
                      "seed": run["seed"]}, stage1_dir(profile) / name))
    for record in sorted(stage2_dir(profile).glob(f"*/{RECORD}")):
        run = json.loads(record.read_text())["run"]
        runs.append(({"stage": 2, "model": record.parent.name, "teachers": "+".join(run["teacher_members"]),
                      "sup_weight": run["sup_weight"], "distill_weight": run["distill_weight"],
                      "seed": run["seed"]}, record.parent))
    models = []
    for entry, folder in runs:
        for kind in weights:
            path = checkpoint(folder, kind)
            if not path.exists():  # never a silent shrink of the table; a missing file, not a setting
                raise DataError(f"{path} is missing: {entry['model']} has not finished training "
                                  f"(rerun notebook 0{entry['stage']})")
            models.append({**entry, "weights": kind, "checkpoint": path})
    return models


def released_model(path: str | Path) -> dict:
    """The authors' released checkpoint as an entry of the same shape as ``trained_models``'."""
    return {"stage": "released", "model": Path(path).name, "teachers": "", "sup_weight": None,
            "distill_weight": None, "seed": None, "weights": "released", "checkpoint": Path(path)}


def stage2_grid(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Model folder -> (teacher kind, student, initial member) for exactly the runs of the latest stage-2
    grid (a grid from before students were numbered apart from members: student = initial member).

    Read from ``grid.json`` and checked against each run's record, so a folder left from an earlier
    grid or with other loss weights never joins a row of the verdict.
    """
    listing = Path(folder) / GRID_LISTING
    if not listing.exists():
        raise DataError(f"{listing} is missing: run stage 2 (notebook 03) to train its grid")
    out = {}
    for entry in json.loads(listing.read_text())["runs"]:
        record_path = Path(folder) / entry["model"] / RECORD
        if not record_path.exists():
            raise DataError(f"{record_path} is missing: {entry['model']} of the stage-2 grid has not finished")
        run = json.loads(record_path.read_text())["run"]
        recorded = {key: run[key] for key in ("teachers", "init_member", "sup_weight", "distill_weight")}
        if recorded != {key: entry[key] for key in recorded}:
            raise DataError(f"{record_path} records {recorded}, but {listing} plans {entry}: rerun notebook 03")
        out[entry["model"]] = (run["teachers"], run.get("student", run["init_member"]), run["init_member"])
    return out
