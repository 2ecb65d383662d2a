"""Stage 2 on a miniature synthetic set: teachers from stored embeddings, initialisation, reuse."""

import json
import math

import numpy as np

import pytest
import torch

from salsa_lib import runs
from salsa_lib.config import Stage2Config
from salsa_lib.core.checkpoints import load_member
from salsa_lib.core.losses import contrastive_loss, correspondence_targets, distillation_loss
from salsa_lib.data import data_sources
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import file_digest
from salsa_lib.stages import correspondences, stage1, stage2

pytestmark = pytest.mark.slow

STAGE2 = dict(profile="test", batch_size=10, eval_batch_size=4, epochs=1, warmup_epochs=0.5,
              rampdown_start=0.5, rampdown_stop=1.0, students=1)


@pytest.fixture
def trained(tiny_home, tiny_stage1):
    data = data_sources.load_data_config("test")
    stage1.train_members(tiny_stage1.replace(members=2), data, progress=False)
    train = data_sources.load_splits(data, ("train",), progress=False)["train"]
    return data, train


def test_missing_embeddings_are_reported(trained):
    data, _ = trained
    with pytest.raises(DataError, match="notebook 02"):
        stage2.train(Stage2Config(teachers="ensemble", **STAGE2), data, progress=False)


def test_ensemble_distillation_trains_from_the_initial_member(trained, monkeypatch):
    data, train = trained
    files = correspondences.embed_members("test", train, batch_size=8)
    assert [f.parent.name for f in files] == ["member0", "member1"]
    config = Stage2Config(teachers="ensemble", **STAGE2)
    [record] = stage2.train(config, data, progress=False)
    assert record["run"]["teacher_members"] == ["member0", "member1"]
    assert record["run"]["init_checkpoint"] == file_digest(
        runs.member_dir("test", 0) / "checkpoints" / "best.ckpt")
    [run] = stage2.planned_runs(config)
    student, student_config = load_member(stage2.run_dir("test", run) / "checkpoints" / "best.ckpt")
    assert student_config.seed == config.seed and student_config.passt_width == 64  # architecture from stage 1
    table = stage2.comparison_table(config)
    assert list(table.stage) == [1, 1, 2] and table["mAP@10"].between(0, 1).all()
    assert table.teachers.iloc[-1] == "member0+member1"

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(stage2, "fit", no_training)
    assert stage2.train(config, data, progress=False)[0]["run"] == record["run"]  # reused
    # the run is keyed by the precision it trained in, not by "auto": another answer trains it again
    assert record["run"]["precision"] == record["precision"] != "auto"
    other = "bf16-mixed" if record["precision"] == "32-true" else "32-true"
    monkeypatch.setenv("SALSA_CPU_BF16", "1" if other == "bf16-mixed" else "0")
    with pytest.raises(AssertionError, match="trained again"):
        stage2.train(config, data, progress=False)


def test_with_fewer_members_than_students_students_share_a_member_and_differ_in_seed():
    config = Stage2Config(**{**STAGE2, "students": 3}, teachers="self,control")
    planned = stage2.planned_runs(config, n_members=1)
    assert [(r.teachers, r.student, r.init_member, r.seed) for r in planned] == [
        (kind, k, 0, config.seed + k) for kind in ("self", "control") for k in range(3)]
    assert [stage2.run_dir("test", r).name for r in planned[:3]] == [
        "self_from_member0", "self_from_member0_student1", "self_from_member0_student2"]
    assert [r.init_member for r in stage2.planned_runs(config.replace(students=5), n_members=2)][:5] == [0, 1, 0, 1, 0]
    assert len({stage2.run_dir("test", r) for r in stage2.planned_runs(config.replace(students=5), 2)}) == 10
    with pytest.raises(ConfigError, match="no member"):
        stage2.planned_runs(config, n_members=0)


def test_paired_grid_self_control_and_truth(trained):
    data, train = trained
    correspondences.embed_members("test", train, batch_size=8)
    config = Stage2Config(**{**STAGE2, "students": 2}, teachers="self,control,truth")
    runs = stage2.planned_runs(config)
    assert [(r.teachers, r.init_member, r.seed) for r in runs] == [
        (kind, k, config.seed + k) for kind in ("self", "control", "truth") for k in (0, 1)]
    assert [stage2.run_dir("test", r).name for r in runs][:3] == ["self_from_member0", "self_from_member1",
                                                                   "control_from_member0"]
    records = stage2.train(config, data, progress=False)
    members = {r["folder"]: r["run"]["teacher_members"] for r in records}
    assert members == {"self_from_member0": ["member0"], "self_from_member1": ["member1"],
                       "control_from_member0": [], "control_from_member1": [],
                       "truth_from_member0": ["truth"], "truth_from_member1": ["truth"]}
    control = next(r["run"] for r in records if r["folder"] == "control_from_member1")
    assert (control["sup_weight"], control["distill_weight"], control["seed"]) == (1.0, 0.0, config.seed + 1)
    assert "truth_sha256" in next(r["run"] for r in records if r["folder"] == "truth_from_member0")
    recipe = stage2.recipe_table("test", records).set_index("field")
    assert recipe.same.all(), recipe[~recipe.same]  # stage 2 is the stage-1 recipe run again
    assert recipe.loc["epochs", "stage 2"] == "1" and recipe.loc["rampdown_stop", "stage 1"] == "1.0"
    longer = [{**r, "run": {**r["run"], "epochs": 2}} for r in records]
    assert not stage2.recipe_table("test", longer).set_index("field").loc["epochs", "same"]
    six = stage2.planned_runs(Stage2Config(**{**STAGE2, "students": 6}, teachers="self"), n_members=2)
    assert [(r.student, r.init_member) for r in six] == [(k, k % 2) for k in range(6)]  # two members, six students
    with pytest.raises(ConfigError, match="teachers"):
        Stage2Config(teachers="ensemble,oracle")


def test_truth_targets_match_a_brute_force_construction():
    """Targets of a batch from the known matrix: softmax over the batch of (1 if true else 0) / tau, both ways."""
    torch.manual_seed(0)
    truth = torch.rand(6, 30) < 0.3
    truth[torch.arange(6).repeat_interleave(5), torch.arange(30)] = True  # a caption describes its own clip
    audio_idx, caption_idx, tau = torch.tensor([2, 0, 2, 5]), torch.tensor([11, 3, 12, 27]), 0.05
    p_caption, p_audio = correspondence_targets(correspondences.truth_logits(truth, audio_idx, caption_idx, tau))
    for i, a in enumerate(audio_idx.tolist()):
        row = [math.exp((1.0 if truth[a, c] else 0.0) / tau) for c in caption_idx.tolist()]
        assert torch.allclose(p_caption[i], torch.tensor([v / sum(row) for v in row]), atol=1e-6)
    for j, c in enumerate(caption_idx.tolist()):
        column = [math.exp((1.0 if truth[a, c] else 0.0) / tau) for a in audio_idx.tolist()]
        assert torch.allclose(p_audio[:, j], torch.tensor([v / sum(column) for v in column]), atol=1e-6)
    # each row's mass sits (all but e^-20) on the batch captions that truly describe the clip
    true_in_batch = truth[audio_idx][:, caption_idx].float()
    assert torch.allclose(p_caption, true_in_batch / true_in_batch.sum(1, keepdim=True), atol=1e-6)


def test_truth_teacher_in_the_module(trained):
    data, train = trained
    run = json.loads((runs.member_dir("test", 0) / "run.json").read_text())["run"]
    params = {k: v for k, v in run.items() if k != "data"}
    truth = torch.rand(train.n_clips, train.n_captions) < 0.2
    module = stage2.DistillationModule(params, 4, params, None, None, sup_weight=0.0, distill_weight=1.0, truth=truth)
    batch = {"audio_idx": torch.tensor([3, 0, 3, 7]), "idx": torch.tensor([15, 2, 19, 36])}
    logits = torch.randn(4, 4)
    teacher = truth[batch["audio_idx"]][:, batch["idx"]].float() / 0.05
    assert torch.isclose(module.loss(logits, batch), distillation_loss(logits, teacher), atol=1e-6)


def test_distillation_module_loss_uses_the_batch_items_teachers(trained):
    data, train = trained
    correspondences.embed_members("test", train, batch_size=8)
    payloads = [correspondences.load_embeddings(correspondences.embeddings_path(f), train)
                for f in runs.member_folders("test")]
    audio, captions = correspondences.stack_teachers(payloads)
    run = json.loads((runs.member_dir("test", 0) / "run.json").read_text())["run"]
    params = {k: v for k, v in run.items() if k != "data"}
    module = stage2.DistillationModule(params, 4, params, audio, captions, sup_weight=0.5, distill_weight=1.0)
    batch = {"audio_idx": torch.tensor([3, 0, 3, 7]), "idx": torch.tensor([15, 2, 19, 36])}
    logits = torch.randn(4, 4)
    teacher = sum(audio[m][batch["audio_idx"]] @ captions[m][batch["idx"]].T for m in range(2)) / 2 / 0.05
    expected = distillation_loss(logits, teacher) + 0.5 * contrastive_loss(logits, batch["audio_idx"])
    assert torch.isclose(module.loss(logits, batch), expected, atol=1e-5)


def test_notebook_03s_plan_fits_a_laptop_and_says_so(trained, monkeypatch, capsys):
    """8 cores and 16 GiB injected: stage 2 starts no more workers than the memory holds, and its one
    line says how many and why (the issue's laptop: 8 processes of ~2.3 GB each would not fit)."""
    from salsa_lib.stages import parallel_runs, resources

    data, train = trained
    correspondences.embed_members("test", train, batch_size=8)
    monkeypatch.setattr(resources, "available_cores", lambda *a, **k: 8)
    monkeypatch.setattr(resources, "available_memory", lambda *a, **k: 16 * 2 ** 30)
    started = []
    monkeypatch.setattr(parallel_runs, "run_all", lambda job, jobs, workers, threads, announce=None:
                        started.append((len(jobs), workers, threads)) or [])
    stage2.train(Stage2Config(**{**STAGE2, "students": 2}, teachers="self,control,truth"), data, progress=True)
    [(runs_planned, workers, threads)] = started
    assert runs_planned == 6 and workers * parallel_runs.WORKER_MEMORY_MB * 2 ** 20 <= 16 * 2 ** 30
    assert (workers, threads) == (4, 2)
    assert ("training 6 students in 4 processes, 2 threads each (8 cores, 16.0 GiB available at 4.0 GiB per run "
            "(4 fit), 6 runs; limited by memory)") in capsys.readouterr().out


def test_same_architecture_and_mixed_ensembles_teach_their_members(tiny_home, tiny_stage1, monkeypatch):
    """ensemble: the members of the student's architecture (its own included); mixed: every family;
    students start only from members of their own architecture."""
    data = data_sources.load_data_config("test")
    stage1.train_members(tiny_stage1.replace(members=2, other_members="frames_small"), data, progress=False)
    train = data_sources.load_splits(data, ("train",), progress=False)["train"]
    correspondences.embed_members("test", train, batch_size=8)
    config = Stage2Config(**{**STAGE2, "students": 2}, teachers="ensemble,mixed,self")
    records = stage2.train(config, data, progress=False)
    teachers = {r["folder"]: r["run"]["teacher_members"] for r in records}
    assert teachers["ensemble_from_member1"] == ["member0", "member1"]
    assert teachers["mixed_from_member0"] == teachers["mixed_from_member1"] == ["member0", "member1", "member2"]
    assert teachers["self_from_member1"] == ["member1"]
    membership = correspondences.ensemble_membership("test").set_index("ensemble")
    assert membership.loc["mixed", "audio encoders"] == "passt_small, frames_small"
    assert membership["student's own member included"].all()
    payloads = [correspondences.load_embeddings(correspondences.embeddings_path(f), train)
                for f in runs.member_folders("test")]
    estimates = correspondences.ensemble_estimates("test", payloads, block=7)
    audio, captions = correspondences.stack_teachers(payloads[:2])
    np.testing.assert_allclose(estimates["ensemble"], correspondences.full_split_similarity(audio, captions), rtol=1e-6)
    assert estimates["mixed"].shape == estimates["ensemble"].shape
    assert not np.allclose(estimates["mixed"], estimates["ensemble"])
    # member2 is no PaSST to start from: a third student starts from member0 again, with its own seed
    dispatched = []
    monkeypatch.setattr(stage2.parallel_runs, "run_all", lambda job, jobs, *a, **k: dispatched.extend(jobs) or [])
    stage2.train(Stage2Config(**{**STAGE2, "students": 3}, teachers="self"), data, progress=False)
    assert [(job[2].student, job[2].init_member) for job in dispatched] == [(0, 0), (1, 1), (2, 0)]
