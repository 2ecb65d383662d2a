"""Stage 1 end to end on a miniature synthetic set: checkpoints, reuse, resume, safe loading."""

import json
import pickle

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch

from salsa_lib import runs
from salsa_lib.core.checkpoints import load_member
from salsa_lib.data import data_sources
from salsa_lib.errors import DataError
from salsa_lib.stages import run_folders, stage1

pytestmark = pytest.mark.slow


def _train(config, force: bool = False):
    return stage1.train_members(config, data_sources.load_data_config("test"), progress=False, force=force)


def test_member_trains_writes_checkpoints_and_record(tiny_home, tiny_stage1):
    table = _train(tiny_stage1)
    folder = runs.member_dir("test", 0)
    record = json.loads((folder / "run.json").read_text())
    best = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in best and best["hyper_parameters"]["params"]["seed"] == tiny_stage1.seed
    assert last["optimizer_states"]  # what a resume needs
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert record["run"]["seed"] == tiny_stage1.seed
    assert set(record["val"]) == {"mAP@10", "R@1", "R@5", "R@10"}
    assert 0 <= record["val"]["mAP@10"] <= 1 and record["git_commit"]
    assert list(table.columns[:4]) == ["member", "audio_encoder", "seed", "best_epoch"]
    listed = json.loads((runs.stage1_dir("test") / "members.json").read_text())["members"]
    assert listed == ["member0"]
    assert pd.read_csv(tiny_home / "results/test/tables/stage1_members.csv").shape[0] == 1


def test_finished_member_is_reused_and_changed_parameters_retrain(tiny_home, tiny_stage1, monkeypatch):
    _train(tiny_stage1)
    best = (runs.member_dir("test", 0) / "checkpoints" / "best.ckpt").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished member was trained again")

    monkeypatch.setattr(stage1, "fit", no_training)
    _train(tiny_stage1)  # same parameters: reused
    monkeypatch.undo()
    monkeypatch.setenv("SALSA_HOME", str(tiny_home))
    _train(tiny_stage1.replace(lr_text_projection=2e-3))  # other parameters: old run kept aside
    previous = runs.stage1_dir("test") / ".previous"
    assert (previous / "member0-1" / "checkpoints" / "best.ckpt").read_bytes() == best
    retrained = (runs.member_dir("test", 0) / "checkpoints" / "best.ckpt").read_bytes()
    _train(tiny_stage1.replace(lr_text_projection=2e-3), force=True)  # run_all.sh --force: same parameters, trained again
    assert (previous / "member0-2" / "checkpoints" / "best.ckpt").read_bytes() == retrained
    assert (previous / "member0-1" / "checkpoints" / "best.ckpt").read_bytes() == best  # still kept


class _Crash(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_interrupted_member_resumes_from_last_checkpoint(tiny_home, tiny_stage1, monkeypatch):
    config = tiny_stage1.replace(epochs=2)
    real_trainer = pl.Trainer
    monkeypatch.setattr(pl, "Trainer", lambda **kw: real_trainer(**{**kw, "callbacks": [*kw["callbacks"], _Crash()]}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(config)
    folder = runs.member_dir("test", 0)
    assert not (folder / "run.json").exists()
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    monkeypatch.setattr(pl, "Trainer", real_trainer)
    _train(config)  # resumes: only epoch 1 is trained now
    assert list(run_folders.epoch_metrics(folder)["epoch"]) == [0, 1]
    resumed = pd.read_csv(folder / "logs" / "attempt1" / "metrics.csv")
    assert set(resumed["epoch"].dropna()) == {1}  # epoch 0 was not trained again
    assert (folder / "run.json").exists()


def test_load_member_roundtrip_and_refusals(tiny_home, tiny_stage1, tmp_path):
    _train(tiny_stage1)
    best = runs.member_dir("test", 0) / "checkpoints" / "best.ckpt"
    model, config = load_member(best)
    assert config.seed == tiny_stage1.seed and not model.training
    with torch.no_grad():
        embedding = model.embed_text(["a dog barks"])
    assert embedding.shape == (1, tiny_stage1.embed_dim)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1))

    with pytest.raises(DataError, match="does not exist"):
        load_member(tmp_path / "missing.ckpt")

    state = torch.load(best, weights_only=True)
    state["state_dict"]["model.project_text.extra"] = torch.zeros(1)
    del state["state_dict"]["model.project_audio.weight"]
    tampered = tmp_path / "tampered.ckpt"
    torch.save(state, tampered)
    with pytest.raises(DataError, match="project_audio.weight") as info:
        load_member(tampered)
    assert "project_text.extra" in str(info.value)

    malicious = tmp_path / "malicious.ckpt"
    malicious.write_bytes(pickle.dumps(_CodeRunner()))
    with pytest.raises(DataError, match="pickled objects"):
        load_member(malicious)

    resized = torch.load(best, weights_only=True)
    resized["state_dict"]["model.project_audio.weight"] = torch.zeros(3, 3)
    torch.save(resized, tmp_path / "resized.ckpt")
    with pytest.raises(DataError, match="does not fit.*project_audio.weight"):
        load_member(tmp_path / "resized.ckpt")


@pytest.mark.parametrize("content, expected", [
    (b"", "not a readable checkpoint"),
    (b"a text file, not a checkpoint", "not a readable checkpoint"),
    ("tensor", "holds a Tensor"),
    ({"epoch": 3}, "no saved parameters"),
])
def test_load_member_names_the_file_for_anything_else(tmp_path, content, expected):
    path = tmp_path / "odd.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(torch.zeros(3) if content == "tensor" else content, path)
    with pytest.raises(DataError, match=expected) as info:
        load_member(path)
    assert "odd.ckpt" in str(info.value)


class _CodeRunner:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_regenerated_data_retrain_the_member(tiny_home, tiny_stage1):
    _train(tiny_stage1)
    data = data_sources.load_data_config("test").replace(synthetic_seed=1)  # a different data set, same params
    data_sources.fetch(data, progress=False)
    data_sources.load_splits(data, progress=False)
    data_sources.save_data_config(data)
    _train(tiny_stage1)
    assert (runs.stage1_dir("test") / ".previous" / "member0-1" / "run.json").exists()


def _recording_fit(trained: list, crash: bool = False):
    """A stand-in for training: notes the precision of the run it was given and writes its checkpoints
    (``crash``: only last.ckpt, then fails, as an interrupted run leaves it)."""
    def fit(module, folder, *args, **kwargs):
        trained.append(module.hparams["run"]["precision"])
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        for name in ("last",) if crash else ("last", "best"):
            torch.save({"hyper_parameters": dict(module.hparams)}, folder / "checkpoints" / f"{name}.ckpt")
        if crash:
            raise RuntimeError("simulated crash")
        return {"best_epoch": 0, "val": {"mAP@10": 0.5, "R@1": 0.5, "R@5": 0.5, "R@10": 0.5},
                "precision": module.hparams["run"]["precision"]}
    return fit


def test_a_change_of_resolved_precision_retrains_the_member(tiny_home, tiny_stage1, monkeypatch):
    """precision "auto" is recorded as what it resolved to: bf16 on one machine is not fp32 on another."""
    trained = []
    monkeypatch.setattr(stage1, "fit", _recording_fit(trained))
    folder = runs.member_dir("test", 0)
    monkeypatch.setenv("SALSA_CPU_BF16", "1")  # the capability answer, as a CPU with native bf16 gives it
    _train(tiny_stage1)
    assert json.loads((folder / runs.RECORD).read_text())["run"]["precision"] == "bf16-mixed"
    monkeypatch.setenv("SALSA_CPU_BF16", "0")  # a CPU without it: the bf16 member is not reused
    _train(tiny_stage1)
    assert trained == ["bf16-mixed", "32-true"]
    assert json.loads((folder / runs.RECORD).read_text())["run"]["precision"] == "32-true"
    kept = runs.stage1_dir("test") / ".previous" / "member0-1"
    assert json.loads((kept / runs.RECORD).read_text())["run"]["precision"] == "bf16-mixed"  # moved aside
    _train(tiny_stage1)  # same machine answer again: reused
    assert trained == ["bf16-mixed", "32-true"]


def test_an_interrupted_member_never_resumes_under_another_precision(tiny_home, tiny_stage1, monkeypatch):
    trained = []
    folder = runs.member_dir("test", 0)
    monkeypatch.setenv("SALSA_CPU_BF16", "1")
    monkeypatch.setattr(stage1, "fit", _recording_fit(trained, crash=True))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tiny_stage1)
    assert (folder / "checkpoints" / "last.ckpt").exists() and not (folder / runs.RECORD).exists()
    monkeypatch.setenv("SALSA_CPU_BF16", "0")
    monkeypatch.setattr(stage1, "fit", _recording_fit(trained))
    _train(tiny_stage1)
    kept = runs.stage1_dir("test") / ".previous" / "member0-1" / "checkpoints" / "last.ckpt"
    assert torch.load(kept, weights_only=True)["hyper_parameters"]["run"]["precision"] == "bf16-mixed"
    assert trained == ["bf16-mixed", "32-true"]  # the fp32 run started afresh, beside nothing of the bf16 one
    assert json.loads((folder / runs.RECORD).read_text())["run"]["precision"] == "32-true"


def test_a_rerun_on_the_same_machine_and_threads_is_bit_identical(tiny_home, tiny_stage1):
    """What the README promises for a rerun: same machine kind, same core count, same plan -> same bits."""
    _train(tiny_stage1.replace(precision="32-true"))
    first = torch.load(runs.checkpoint(runs.member_dir("test", 0)), weights_only=True)["state_dict"]
    record = json.loads((runs.member_dir("test", 0) / runs.RECORD).read_text())
    _train(tiny_stage1.replace(precision="32-true"), force=True)
    again = torch.load(runs.checkpoint(runs.member_dir("test", 0)), weights_only=True)["state_dict"]
    assert again.keys() == first.keys()
    for name, tensor in first.items():
        assert torch.equal(again[name], tensor), name  # exact, not close
    assert json.loads((runs.member_dir("test", 0) / runs.RECORD).read_text())["val"] == record["val"]


def test_other_families_train_as_more_members_with_the_same_recipe(tiny_home, tiny_stage1):
    """A mixed ensemble: members 0..K-1 of the students' architecture, then one of each other family,
    every one with the same recipe, text encoder and the next seed, each listed with its family."""
    config = tiny_stage1.replace(other_members="mobilenet_small,frames_small")
    table = _train(config)
    assert list(table.audio_encoder) == ["passt_small", "mobilenet_small", "frames_small"]
    assert list(table.seed) == [config.seed, config.seed + 1, config.seed + 2]
    listing = json.loads((runs.stage1_dir("test") / runs.MEMBERS_LISTING).read_text())
    assert listing["members"] == ["member0", "member1", "member2"]
    assert runs.member_audio_encoders("test") == dict(zip(listing["members"], table.audio_encoder))
    records = [json.loads((runs.member_dir("test", k) / runs.RECORD).read_text())["run"] for k in range(3)]
    recipe = {k: v for k, v in records[0].items() if k not in ("audio_encoder", "seed", "other_members")}
    for record in records[1:]:  # the same recipe and text encoder
        assert {k: record[k] for k in recipe} == recipe
    model, member_config = load_member(runs.checkpoint(runs.member_dir("test", 1)))
    assert member_config.audio_encoder == "mobilenet_small" and model.audio_encoder.passt is None
    assert runs.ensembles("test") == {"ensemble": ["member0"], "mixed": ["member0", "member1", "member2"]}
    # adding or dropping a family leaves the members already trained as they are
    best = runs.checkpoint(runs.member_dir("test", 0)).read_bytes()
    _train(config.replace(other_members="mobilenet_small"))
    assert runs.checkpoint(runs.member_dir("test", 0)).read_bytes() == best
    assert not (runs.stage1_dir("test") / ".previous" / "member0-1").exists()


def test_an_unknown_family_is_refused_before_anything_trains(tiny_home, tiny_stage1):
    from salsa_lib.errors import ConfigError

    with pytest.raises(ConfigError, match="other_members='mobilenet,passt_small'.*mobilenet"):
        _train(tiny_stage1.replace(other_members="mobilenet,passt_small"))
    assert not runs.stage1_dir("test").exists()


def test_each_family_pretrains_once_side_by_side_and_a_given_record_is_not_redone(tiny_home, tiny_stage1, monkeypatch):
    """Three families on 2 workers: a record per family, each naming its own weights; a second call and
    a record the caller passes in are reused, never trained again."""
    from salsa_lib.stages import pretraining

    config = tiny_stage1.replace(other_members="mobilenet_small,frames_small", pretrain_clips=12, pretrain_epochs=1,
                                 parallel_runs=2)
    data = data_sources.load_data_config("test")
    records = stage1.pretrain_families(config, data, progress=False)
    assert list(records) == ["passt_small", "mobilenet_small", "frames_small"]
    for family, record in records.items():
        assert record["params"]["audio_encoder"] == family
        assert pretraining.checkpoint_path("test", family).exists()
    dispatched = []
    monkeypatch.setattr(stage1.parallel_runs, "run_all", lambda job, jobs, *a, **k: dispatched.extend(jobs) or
                        [job(*arguments) for arguments in jobs])
    again = stage1.pretrain_families(config, data, progress=False, given={"passt_small": records["passt_small"]})
    assert again == records
    assert [job[0].audio_encoder for job in dispatched] == ["mobilenet_small", "frames_small"]  # reused, not redone
    # --force: notebook 01 pretrains in section 0 and hands every record to the members' call, which
    # must not pretrain them a second time (it once did, for the two other families)
    dispatched.clear()
    assert stage1.pretrain_families(config, data, progress=False, force=True, given=records) == records
    assert dispatched == []
