"""The house rules of issue 15: one-way dependencies, values declared once, logic in named functions."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from salsa_lib import runs
from salsa_lib.config import DataConfig, Stage1Config
from salsa_lib.core.model import build_dual_encoder
from salsa_lib.data import clotho, data_sources, synth
from salsa_lib.data.splits import CAPTION_COLUMNS, CAPTIONS_PER_CLIP, SPLIT_FOLDERS, caption_clips
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.stages import correspondences, embedding, released

TINY = dict(passt_width=32, passt_depth=1, passt_heads=2, text_trainable_layers=1, embed_dim=16,
            train_seconds=1.0, eval_seconds=1.0, window_seconds=1.0, members=1, pretrain_clips=0)
# modules of the training side: the search path must not load any of them, not even lazily
STAGE_MODULES = ("salsa_lib.stages.stage1", "salsa_lib.stages.stage2", "salsa_lib.stages.training", "salsa_lib.stages.correspondences",
                 "salsa_lib.stages.evaluation", "salsa_lib.stages.pretraining", "salsa_lib.runner", "salsa_lib.stages.step_cache")


def _checkpoint(path, **params):
    """A checkpoint in this project's format (parameters + ``model.``-prefixed weights), no Lightning."""
    config = Stage1Config(profile="test", **{**TINY, **params})
    torch.manual_seed(0)
    model = build_dual_encoder(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"params": config.to_params()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


QUERY_SCRIPT = """
import json, sys
from salsa_lib.search import cli as search, retrieval
model, _, model_id = retrieval.load_search_model(sys.argv[1])
index = retrieval.build_index(sys.argv[2], model, model_id, progress=False)
response = retrieval.search(index, model, model_id, "a siren wails", top_k=2)
loaded = sorted(m for m in sys.modules if "lightning" in m or m in {stages!r})
print(json.dumps({{"results": [r.path for r in response], "loaded": loaded}}))
"""


def test_a_real_query_loads_no_training_framework_and_no_stage_module(tmp_path):
    checkpoint = _checkpoint(tmp_path / "member0" / "checkpoints" / "best.ckpt")
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.flac"):
        sf.write(sounds / name, 0.1 * rng.standard_normal(32000).astype(np.float32), 32000)
    code = QUERY_SCRIPT.format(stages=STAGE_MODULES)
    out = subprocess.run([sys.executable, "-c", code, str(checkpoint), str(sounds)], capture_output=True,
                         text=True, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert sorted(report["results"]) == ["a.wav", "b.flac"]  # the query ran over both files
    assert report["loaded"] == []


def test_captions_per_clip_and_split_names_are_declared_once():
    assert CAPTION_COLUMNS == [f"caption_{k}" for k in range(1, CAPTIONS_PER_CLIP + 1)]
    assert list(caption_clips(3)) == [c for c in range(3) for _ in range(CAPTIONS_PER_CLIP)]
    assert tuple(SPLIT_FOLDERS.values()) == clotho.CLOTHO_SPLITS == synth.SPLITS
    assert data_sources.SPLITS is SPLIT_FOLDERS


def test_torch_device_follows_the_lightning_accelerator_names(monkeypatch):
    assert embedding.torch_device("cpu") == "cpu" and embedding.torch_device("gpu") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embedding.torch_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert embedding.torch_device("auto") == "cuda"


def test_forward_pass_configs_refuse_an_unknown_accelerator():
    from salsa_lib.config import CorrespondenceConfig, EvaluationConfig

    for config_class in (CorrespondenceConfig, EvaluationConfig):
        with pytest.raises(ConfigError, match="accelerator='cuda'; choose one of auto, cpu, gpu"):
            config_class(accelerator="cuda")


def _members(home, taus):
    stage1 = home / "results" / "test" / "stage1"
    for k, tau in enumerate(taus):
        _checkpoint(runs.checkpoint(stage1 / f"member{k}"), tau=tau)
    (stage1 / runs.MEMBERS_LISTING).write_text(json.dumps({"members": [f"member{k}" for k in range(len(taus))]}))


def test_tau_is_read_from_the_members_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    _members(tmp_path, [0.07, 0.07])
    assert correspondences.teachers_tau("test") == pytest.approx(0.07)


def test_members_with_different_tau_have_no_common_temperature(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    _members(tmp_path, [0.05, 0.07])
    with pytest.raises(ConfigError, match="different tau"):
        correspondences.teachers_tau("test")


def test_truth_and_chance_tables_of_the_synthetic_set(tiny_home):
    config = data_sources.load_data_config("test")
    splits = data_sources.load_splits(config, progress=False)
    chance, matches = data_sources.truth_and_chance(config, splits)
    assert list(chance.split) == ["train", "val", "test"] and list(chance.clips) == [8, 4, 4]
    assert (chance["chance_mAP@10"] > 0).all() and (chance["chance_multi_mAP@10"] >= chance["chance_mAP@10"]).all()
    assert len(matches) == sum(s.n_captions for s in splits.values()) and (matches.true_matches >= 1).all()
    truth = data_sources.load_truth(config, "test")
    assert truth.shape == (4, 4 * CAPTIONS_PER_CLIP)
    unknown = DataConfig(profile="test", dataset="custom", data_root=str(tiny_home))
    assert data_sources.load_truth(unknown, "test") is None and data_sources.truth_and_chance(unknown, splits) is None


def test_an_absent_released_checkpoint_is_skipped_with_a_reason(tmp_path):
    model, note = released.load_for_evaluation(tmp_path / "passt_roberta.ckpt")
    assert model is None and "passt_roberta.ckpt" in note and "skipped" in note


def test_run_registry_lists_members_then_stage2_runs_with_both_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    stage1 = runs.stage1_dir("test")
    for name in ("member0", "member1"):
        for weights in runs.WEIGHTS:
            runs.checkpoint(stage1 / name, weights).parent.mkdir(parents=True, exist_ok=True)
            runs.checkpoint(stage1 / name, weights).write_bytes(b"")
        (stage1 / name / runs.RECORD).write_text(json.dumps({"run": {"seed": int(name[-1])}}))
    (stage1 / runs.MEMBERS_LISTING).write_text(json.dumps({"members": ["member0", "member1"]}))
    student = runs.stage2_dir("test") / "ensemble_from_member0"
    runs.checkpoint(student).parent.mkdir(parents=True)
    runs.checkpoint(student).write_bytes(b"")
    (student / runs.RECORD).write_text(json.dumps({"run": {"teachers": "ensemble", "init_member": 0, "seed": 9,
                                                           "teacher_members": ["member0", "member1"],
                                                           "sup_weight": 0.0, "distill_weight": 1.0}}))
    models = runs.trained_models("test", ("best",))
    assert [(m["stage"], m["model"]) for m in models] == [(1, "member0"), (1, "member1"), (2, "ensemble_from_member0")]
    assert models[2]["teachers"] == "member0+member1"
    with pytest.raises(DataError, match="last.ckpt is missing"):  # never a silently shorter table
        runs.trained_models("test", ("best", "last"))
    with pytest.raises(DataError, match="grid.json is missing"):  # the verdict reads only a listed grid
        runs.stage2_grid(runs.stage2_dir("test"))
    (runs.stage2_dir("test") / runs.GRID_LISTING).write_text(json.dumps({"runs": [
        {"model": "ensemble_from_member0", "teachers": "ensemble", "init_member": 0, "seed": 9,
         "sup_weight": 0.0, "distill_weight": 1.0}]}))
    assert runs.stage2_grid(runs.stage2_dir("test")) == {"ensemble_from_member0": ("ensemble", 0, 0)}
    with pytest.raises(ConfigError, match=r"member\(s\) \['member7'\] not found"):
        runs.member_folders("test", ["member7"])
