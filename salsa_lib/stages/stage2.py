"""Stage 2: initialise from a stage-1 member and distil the estimated correspondences (method §7.3).

The student sees, for every batch, the teachers' in-batch ensemble logits C_bar / tau as soft targets
(normalised within the batch in both directions). Teachers come from stored embeddings, so no
teacher network runs during training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import pandas as pd
import torch

from salsa_lib import reports, runs
from salsa_lib.config import DataConfig, Stage1Config, Stage2Config, TrainingConfig
from salsa_lib.core.checkpoints import load_member, saved_hparams
from salsa_lib.core.losses import contrastive_loss, distillation_loss
from salsa_lib.data import data_sources
from salsa_lib.data.splits import split_fingerprint
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_write_json, file_digest
from salsa_lib.stages import correspondences, parallel_runs, precision, verdict
from salsa_lib.stages.run_folders import announce_finished, epoch_metrics, train_or_reuse
from salsa_lib.stages.training import RetrievalModule, fit, make_loaders


class DistillationModule(RetrievalModule):
    """The stage-1 module with L = sup_weight * L_sup + distill_weight * L_dist.

    The teacher logits of a batch come either from the teachers' stored embeddings (C_bar / tau) or,
    with ``truth``, from the known correspondence matrix (``correspondences.truth_logits``).
    """

    def __init__(self, params: dict, steps_per_epoch: int, run: dict, teacher_audio: torch.Tensor | None,
                 teacher_captions: torch.Tensor | None, sup_weight: float, distill_weight: float,
                 truth: torch.Tensor | None = None):
        super().__init__(params, steps_per_epoch, run)
        # not persistent: checkpoints hold the student only; the run record names the teachers
        self.register_buffer("teacher_audio", teacher_audio, persistent=False)
        self.register_buffer("teacher_captions", teacher_captions, persistent=False)
        self.register_buffer("truth", truth, persistent=False)
        self.sup_weight, self.distill_weight = sup_weight, distill_weight

    def teacher_logits(self, batch: dict) -> torch.Tensor:
        tau = float(self.model.tau)
        if self.truth is not None:
            return correspondences.truth_logits(self.truth, batch["audio_idx"], batch["idx"], tau)
        return correspondences.ensemble_logits(self.teacher_audio[:, batch["audio_idx"]],
                                               self.teacher_captions[:, batch["idx"]], tau)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        loss = self.distill_weight * distillation_loss(logits, self.teacher_logits(batch))
        if self.sup_weight:  # applied once (the original squared it, method §12 item 1)
            loss = loss + self.sup_weight * contrastive_loss(logits, batch["audio_idx"])
        return loss


@dataclass(frozen=True)
class StudentRun:
    """One stage-2 training run: what teaches it, its place in the pairing, which member it starts from,
    its seed and loss weights."""

    teachers: str
    student: int
    init_member: int
    seed: int
    sup_weight: float
    distill_weight: float


def planned_runs(config: Stage2Config, n_members: int | None = None) -> list[StudentRun]:
    """Every teacher kind for students 0..students-1; student k starts from member k mod ``n_members``
    (the stage-1 members of the students' architecture; None: as many as students) with seed + k.

    The same (init member, seed) across kinds makes the seeds paired: a kind and the control differ
    only in their loss. The control trains with L_sup alone, for the same epochs. With fewer members
    than students, several students start from one member and differ in their seed alone (the
    default run: one PaSST member, to fit a laptop's budget; the study: one member per student).
    """
    n_members = config.students if n_members is None else n_members
    if n_members < 1:
        raise ConfigError("stage 1 trained no member of the students' architecture: nothing to start from")
    return [StudentRun(kind, k, k % n_members, config.seed + k,
                       *((1.0, 0.0) if kind == "control" else (config.sup_weight, config.distill_weight)))
            for kind in config.teacher_kinds for k in range(config.students)]


def run_dir(profile: str, run: StudentRun) -> Path:
    """One folder per teacher kind, student, initial member and (non-default) loss weights: student k
    from member k is ``<kind>_from_member<k>``; one from another member says which student it is."""
    name = f"{run.teachers}_from_member{run.init_member}"
    if run.student != run.init_member:
        name += f"_student{run.student}"
    if run.teachers != "control" and (run.sup_weight, run.distill_weight) != (0.0, 1.0):
        name += f"_sup{run.sup_weight:g}_dist{run.distill_weight:g}"
    return runs.stage2_dir(profile) / name


def teacher_names(profile: str, run: StudentRun) -> list[str]:
    """Stage-1 members whose embeddings teach ``run``: the members of its initial member's architecture
    (``ensemble``), every member (``mixed``), the initial member alone (``self``), or none."""
    initial = f"member{run.init_member}"
    if run.teachers in runs.ENSEMBLE_KINDS:
        return runs.ensembles(profile, initial)[run.teachers]
    return [initial] if run.teachers == "self" else []


def train(config: Stage2Config, data: DataConfig, progress: bool = True, force: bool = False) -> list[dict]:
    """Train (or reuse; ``force``: retrain) every planned stage-2 run of ``config``; returns their run records."""
    encoders = runs.member_audio_encoders(config.profile)
    students_kind = [name for name, family in encoders.items() if family == encoders["member0"]]
    splits = data_sources.load_splits(data, splits=("train", "val"), progress=progress)
    if "truth" in config.teacher_kinds:
        _train_truth(data, splits["train"])  # refused here, before any run starts, when it cannot be had
    planned = planned_runs(config, len(students_kind))
    workers, threads, _ = plan = parallel_runs.plan_workers(config, len(planned))
    if progress:
        precision.announce(config.precision, config.accelerator)
        print(parallel_runs.describe(plan, len(planned), "students"), flush=True)
    jobs = [(config, data, run, progress and workers == 1, force) for run in planned]
    records = parallel_runs.run_all(_student_job, jobs, workers, threads,
                                    announce_finished if progress and workers > 1 else None)
    atomic_write_json(runs.stage2_dir(config.profile) / runs.GRID_LISTING,
                      {"runs": [{"model": run_dir(config.profile, run).name, **asdict(run)} for run in planned],
                       "params": runs.identity(config.to_params())})
    return records


def _student_job(config: Stage2Config, data: DataConfig, run: StudentRun, progress: bool, force: bool) -> dict:
    """One stage-2 run from the data config alone: what a worker process of ``parallel_runs`` runs."""
    splits = data_sources.load_splits(data, splits=("train", "val"), progress=False)
    truth = _train_truth(data, splits["train"]) if run.teachers == "truth" else None
    return train_student(config, run, splits["train"], splits["val"], truth, progress, force)


def _train_truth(data: DataConfig, train_split) -> tuple[torch.Tensor, str]:  # (matrix, file hash)
    truth = data_sources.load_truth(data, "train")
    if truth is None:
        raise ConfigError(f"teachers=truth needs the synthetic data set (its true correspondences are known); "
                          f"this profile uses {data.dataset!r}: leave truth out of teachers")
    if truth.shape != (train_split.n_clips, train_split.n_captions):
        raise DataError(f"the truth matrix {truth.shape} does not fit the training split "
                        f"({train_split.n_clips} clips, {train_split.n_captions} captions); were clips skipped?")
    truth_file = data_sources.locate(data).root / f"synthetic_truth_{data_sources.SPLITS['train']}.npz"
    return torch.from_numpy(truth.toarray()), file_digest(truth_file)


def train_student(config: Stage2Config, run: StudentRun, train_split, val_split, truth=None,
                  progress: bool = True, force: bool = False) -> dict:
    """Train (or reuse) one stage-2 run; ``truth``: (matrix, file hash) when ``run.teachers == 'truth'``."""
    init_folder, = runs.member_folders(config.profile, [f"member{run.init_member}"])  # exists and is listed
    names = teacher_names(config.profile, run)
    teachers = runs.member_folders(config.profile, names) if names else []
    payloads = [correspondences.load_embeddings(correspondences.embeddings_path(f), train_split, runs.checkpoint(f))
                for f in teachers]
    init_checkpoint = runs.checkpoint(init_folder)
    verified = {f.name: p["checkpoint_sha256"] for f, p in zip(teachers, payloads)}  # hashed by load_embeddings
    grid = {"teachers", "students", "seed", "sup_weight", "distill_weight"}
    identity = precision.as_trained(runs.identity(config.to_params()))  # the precision it trains in, not "auto"
    record = {**{k: v for k, v in identity.items() if k not in grid}, **asdict(run),
              "teacher_members": [f.name for f in teachers] or (["truth"] if run.teachers == "truth" else []),
              "teacher_checkpoints": [p["checkpoint_sha256"] for p in payloads],
              "init_checkpoint": verified.get(init_folder.name) or file_digest(init_checkpoint),
              "data": {"train": split_fingerprint(train_split), "val": split_fingerprint(val_split)}}
    if run.teachers == "truth":
        record["truth_sha256"] = truth[1]

    def fit_run() -> dict:
        pl.seed_everything(run.seed, workers=True, verbose=False)
        member_params = saved_hparams(init_checkpoint)["params"]
        training_fields = {k: v for k, v in config.to_params().items() if k in Stage1Config.field_names()}
        params = {**member_params, **training_fields, "seed": run.seed}
        train_set, train_loader, val_loader = make_loaders(Stage1Config.from_params(params), train_split, val_split)
        if run.teachers == "control":
            module = RetrievalModule(params, len(train_loader), record)
        else:
            audio, captions = correspondences.stack_teachers(payloads) if payloads else (None, None)
            module = DistillationModule(params, len(train_loader), record, audio, captions, run.sup_weight,
                                        run.distill_weight, truth[0] if run.teachers == "truth" else None)
        initial, _ = load_member(init_checkpoint)
        module.model.load_state_dict(initial.state_dict())  # strict: same architecture, tau included
        module.model.train()
        module.val_captions = val_split.captions
        return fit(module, run_dir(config.profile, run), train_set, train_loader, val_loader, progress)

    return train_or_reuse(run_dir(config.profile, run), record, fit_run, force)


def comparison_table(config: Stage2Config) -> pd.DataFrame:
    """Validation metrics of the stage-1 members and of every stage-2 run of the profile, side by side.

    ``kind`` names what taught each model (``i = j (stage 1)`` for the members, else the teacher kind
    from the run record); ``in_grid`` is False for a stage-2 folder left from an earlier grid.
    """
    grid = runs.stage2_grid(runs.stage2_dir(config.profile)) \
        if (runs.stage2_dir(config.profile) / runs.GRID_LISTING).exists() else {}
    rows = []
    for entry in runs.trained_models(config.profile):
        record = json.loads((Path(entry["checkpoint"]).parent.parent / runs.RECORD).read_text())
        first = entry["stage"] == 1
        rows.append({**{k: v for k, v in entry.items() if k != "checkpoint"}, "checkpoint": "best",
                     "kind": verdict.STAGE1 if first else record["run"]["teachers"],
                     "in_grid": first or entry["model"] in grid, "best_epoch": record["best_epoch"], **record["val"]})
    table = pd.DataFrame(rows)
    reports.write_table(table, config.profile, "stage2_vs_stage1_validation")
    return table


def validation_by_kind(table: pd.DataFrame, columns=("mAP@10", "R@1", "R@5", "R@10")) -> pd.DataFrame:
    """``comparison_table`` per kind (the latest grid only): "mean ± sample std (ddof 1)" over its
    models, in percent (n/a for one model), and how many models; the kinds in the verdict's order."""
    chosen = table[table.in_grid] if "in_grid" in table else table
    grouped = chosen.groupby("kind")[list(columns)]
    mean, std = grouped.mean().mul(100), grouped.std(ddof=1).mul(100)
    out = pd.DataFrame({f"val {c} (%)": [f"{m:.2f} ± {'n/a' if pd.isna(d) else f'{d:.2f}'}"
                                         for m, d in zip(mean[c], std[c])] for c in columns}, index=mean.index)
    return out.assign(models=grouped.size()).reindex(verdict.kind_order(out.index))


def recipe_table(profile: str, records: list[dict]) -> pd.DataFrame:
    """The training recipe of every student beside that of the member it started from, field by field.

    The paper's stage 2 is the stage-1 recipe run again (same epochs, warm-up, cosine, learning rates,
    batch and precision), so ``same`` should hold in every row. Read from the run records on disk.
    """
    members = {folder.name: json.loads((folder / runs.RECORD).read_text())
               for folder in runs.member_folders(profile)}
    fields = [name for name in TrainingConfig.field_names() if name not in ("profile", *runs.SCHEDULING_FIELDS)]
    rows = []
    for field in fields:
        first = {members[f"member{r['run']['init_member']}"]["run"].get(field) for r in records}
        second = {r["run"].get(field) for r in records}
        rows.append({"field": field, "stage 1": ", ".join(map(str, sorted(first, key=str))),
                     "stage 2": ", ".join(map(str, sorted(second, key=str))), "same": first == second})
    first = {members[f"member{r['run']['init_member']}"].get("precision", "not recorded") for r in records}
    second = {r.get("precision", "not recorded") for r in records}
    rows.append({"field": "precision (as trained)", "stage 1": ", ".join(sorted(first)),
                 "stage 2": ", ".join(sorted(second)), "same": first == second})
    return pd.DataFrame(rows)


def learning_curves(profile: str, records: list[dict]) -> pd.DataFrame:
    """Validation curves per epoch: the stage-1 members, then each stage-2 run continuing after them.

    Columns of the training logs plus ``kind`` (``i = j (stage 1)`` or the teacher kind) and
    ``model`` (folder); a student's epochs are numbered on from the members' last epoch.
    """
    members = [epoch_metrics(folder).assign(kind=verdict.STAGE1, model=folder.name)
               for folder in runs.member_folders(profile)]
    offset = max(int(curve["epoch"].max()) for curve in members) + 1  # stage 2 continues from the last epoch
    students = [epoch_metrics(runs.stage2_dir(profile) / r["folder"]).assign(
        kind=r["run"]["teachers"], model=r["folder"], epoch=lambda d: d.epoch + offset) for r in records]
    return pd.concat(members + students, ignore_index=True)


def plot_learning_curves(curves: pd.DataFrame, metric: str = "val/mAP@10"):
    """One line per model, one colour per kind (legend outside the axes), stage 2 after a dotted line.

    A student starts from its member's best checkpoint, not from the member's last epoch drawn left
    of the line, so the two are not joined.
    """
    order = verdict.kind_order(curves.kind)
    colors = verdict.kind_colors(order)
    fig, ax = plt.subplots(figsize=(9, 4))
    for model, curve in curves.groupby("model", sort=False):
        curve = curve.dropna(subset=[metric]).sort_values("epoch")
        ax.plot(curve.epoch, 100 * curve[metric], marker="o", markersize=3, lw=1.2, alpha=0.85,
                color=colors[curve.kind.iloc[0]])
    start = curves.loc[curves.kind != verdict.STAGE1, "epoch"].min()
    if not pd.isna(start):
        ax.axvline(start - 0.5, color="0.3", ls=":", lw=1)
        ax.text(start - 0.4, 0.02, "stage 2 →", transform=ax.get_xaxis_transform(), fontsize=8, color="0.3")
    counts = curves.groupby("kind")["model"].nunique()
    handles = [plt.Line2D([], [], color=colors[kind], marker="o", markersize=3, label=f"{kind}: {counts[kind]} model{'' if counts[kind] == 1 else 's'}")
               for kind in order]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="kind",
              title_fontsize=8, frameon=False)
    ax.set(xlabel="epoch (stage 2 numbered on after stage 1)", ylabel=f"validation {metric.removeprefix('val/')} (%)",
           title=f"Validation {metric.removeprefix('val/')} per epoch: stage-1 members, then the students "
                 f"(each from its member's best checkpoint)")
    ax.title.set_fontsize(10)
    fig.tight_layout()
    return fig
