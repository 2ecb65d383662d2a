"""Stage 2 on a miniature synthetic set: teachers from stored embeddings, initialisation, reuse."""

import json

import pytest
import torch

from salsa_lib import correspondences, datasets, stage1, stage2
from salsa_lib.config import Stage2Config
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import file_digest
from salsa_lib.losses import contrastive_loss, distillation_loss

pytestmark = pytest.mark.slow

STAGE2 = dict(profile="test", batch_size=10, eval_batch_size=4, epochs=1, warmup_epochs=0.5,
              rampdown_start=0.5, rampdown_stop=1.0)


@pytest.fixture
def trained(tiny_home, tiny_stage1):
    data = datasets.load_data_config("test")
    stage1.train_members(tiny_stage1.replace(members=2), data, progress=False)
    train = datasets.load_splits(data, ("train",), progress=False)["train"]
    return data, train


def test_missing_embeddings_are_reported(trained):
    data, _ = trained
    with pytest.raises(DataError, match="notebook 02"):
        stage2.train(Stage2Config(**STAGE2), data, progress=False)


def test_ensemble_distillation_trains_from_the_initial_member(trained, monkeypatch):
    data, train = trained
    files = correspondences.embed_members("test", train, batch_size=8)
    assert [f.parent.name for f in files] == ["member0", "member1"]
    config = Stage2Config(**STAGE2)
    record = stage2.train(config, data, progress=False)
    assert record["run"]["teacher_members"] == ["member0", "member1"]
    assert record["run"]["init_checkpoint"] == file_digest(
        stage1.member_dir("test", 0) / "checkpoints" / "best.ckpt")
    student, student_config = stage1.load_member(stage2.run_dir(config) / "checkpoints" / "best.ckpt")
    assert student_config.seed == config.seed and student_config.passt_width == 64  # architecture from stage 1
    table = stage2.comparison_table(config)
    assert list(table.stage) == [1, 1, 2] and table["mAP@10"].between(0, 1).all()
    assert table.teachers.iloc[-1] == "member0+member1"

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(stage2, "fit", no_training)
    assert stage2.train(config, data, progress=False)["run"] == record["run"]  # reused


def test_self_distillation_uses_only_the_initial_member(trained):
    data, train = trained
    correspondences.embed_members("test", train, batch_size=8)
    config = Stage2Config(teachers="self", init_member=1, **STAGE2)
    record = stage2.train(config, data, progress=False)
    assert record["run"]["teacher_members"] == ["member1"]
    assert stage2.run_dir(config).name == "self_from_member1"
    control = Stage2Config(init_member=1, sup_weight=1.0, distill_weight=0.0, **STAGE2)
    assert stage2.run_dir(control).name == "ensemble_from_member1_sup1_dist0"
    with pytest.raises(ConfigError, match="member5"):
        stage2.train(Stage2Config(teachers="self", init_member=5, **STAGE2), data, progress=False)


def test_distillation_module_loss_uses_the_batch_items_teachers(trained):
    data, train = trained
    correspondences.embed_members("test", train, batch_size=8)
    payloads = [correspondences.load_embeddings(correspondences.embeddings_path(f), train)
                for f in correspondences.member_folders("test")]
    audio, captions = correspondences.stack_teachers(payloads)
    run = json.loads((stage1.member_dir("test", 0) / "run.json").read_text())["run"]
    params = {k: v for k, v in run.items() if k != "data"}
    module = stage2.DistillationModule(params, 4, params, audio, captions, sup_weight=0.5, distill_weight=1.0)
    batch = {"audio_idx": torch.tensor([3, 0, 3, 7]), "idx": torch.tensor([15, 2, 19, 36])}
    logits = torch.randn(4, 4)
    teacher = sum(audio[m][batch["audio_idx"]] @ captions[m][batch["idx"]].T for m in range(2)) / 2 / 0.05
    expected = distillation_loss(logits, teacher) + 0.5 * contrastive_loss(logits, batch["audio_idx"])
    assert torch.isclose(module.loss(logits, batch), expected, atol=1e-5)
