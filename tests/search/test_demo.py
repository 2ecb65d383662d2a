"""The demo's model menu (SALSA first, chosen by validation), its marks for true matches, its spans."""

import json

import pytest
import scipy.sparse as sp

from salsa_lib import runs
from salsa_lib.errors import ConfigError
from salsa_lib.search import demo
from salsa_lib.search.vector_index import SearchResult


def _run(folder, val_map: float, run: dict, best_epoch: int = 5):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    (folder / runs.RECORD).write_text(json.dumps({"run": run, "val": {"mAP@10": val_map}, "best_epoch": best_epoch}))


@pytest.fixture
def trained_profile(tmp_path, monkeypatch):
    """Results of profile 'menu': two members, and students of every kind with made-up validation scores."""
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    stage1 = runs.stage1_dir("menu")
    for k, score in enumerate([0.30, 0.20]):  # a member scores best of all: it must still come last
        _run(stage1 / f"member{k}", score, {"seed": k})
    (stage1 / runs.MEMBERS_LISTING).write_text(json.dumps({"members": ["member0", "member1"]}))
    students = {"control_from_member0": ("control", 0.29), "truth_from_member0": ("truth", 0.28),
                "ensemble_from_member0": ("ensemble", 0.21), "ensemble_from_member1": ("ensemble", 0.24),
                "self_from_member1": ("self", 0.22)}
    for name, (teachers, score) in students.items():
        members = [] if teachers in ("control", "truth") else ["member1"]
        _run(runs.stage2_dir("menu") / name, score, {"teachers": teachers, "init_member": int(name[-1]), "seed": 1,
                                                    "sup_weight": 0.0, "distill_weight": 1.0,
                                                    "teacher_members": members})
    return "menu"


def test_the_menu_puts_salsa_students_first_by_validation_score(trained_profile):
    menu = list(demo.available_models(trained_profile))
    assert menu == ["stage 2: ensemble_from_member1", "stage 2: self_from_member1", "stage 2: ensemble_from_member0",
                    "stage 2: control_from_member0", "stage 2: truth_from_member0",
                    "stage 1: member0", "stage 1: member1"]


def test_the_default_model_is_named_and_a_wrong_name_is_refused(trained_profile):
    models = demo.available_models(trained_profile)
    assert demo.choose_model(models) == "stage 2: ensemble_from_member1"
    assert demo.choose_model(models, "stage 1: member1") == "stage 1: member1"
    with pytest.raises(ConfigError, match="model='member9' is not in the menu"):
        demo.choose_model(models, "member9")
    with pytest.raises(ConfigError, match="no trained model"):
        demo.choose_model({})
    words = demo.describe_model(models["stage 2: ensemble_from_member1"])
    assert words.startswith("SALSA: distilled from the stage-1 ensemble") and "member1" in words and "24.0 %" in words
    assert "not SALSA" in demo.describe_model(models["stage 2: control_from_member0"])
    assert demo.describe_model(models["stage 1: member0"]).startswith("stage 1")


def test_every_clip_a_caption_truly_describes_is_marked_not_only_its_own(tmp_path):
    split = tmp_path / "evaluation"
    split.mkdir()
    rows = ["file_name,caption_1,caption_2,caption_3,caption_4,caption_5"]
    rows += [f"{name}.wav,{name} one,{name} two,{name} three,{name} four,A shared caption." for name in "abc"]
    (tmp_path / "clotho_captions_evaluation.csv").write_text("\n".join(rows) + "\n")
    truth = sp.lil_matrix((3, 15), dtype=bool)
    for clip in range(3):
        truth[clip, 5 * clip:5 * clip + 5] = True
    truth[2, 0] = True  # clip c also fits a's first caption
    collection = demo.captioned_collection(tmp_path, "evaluation", truth.tocsr())
    assert collection.root == split
    assert collection.mark("a one", "a.wav") == "✓"
    assert collection.mark("A ONE!", "c.wav") == "✓ true match"  # case and punctuation ignored
    assert collection.mark("a one", "b.wav") == "✗"
    assert collection.mark("a shared caption", "b.wav") in ("✓", "✓ true match")  # each clip has that text
    assert collection.mark("something else", "a.wav") == ""
    unknown = demo.captioned_collection(tmp_path, "evaluation", None)  # ClothoV2: only the caption's own clip
    assert unknown.mark("a one", "c.wav") == "✗" and unknown.mark("a one", "a.wav") == "✓"


def test_a_clip_within_one_window_reads_as_a_whole_clip():
    assert demo._span(SearchResult(1, "a.wav", 0.9, 0.0, 5.0), 5.0) == "whole clip"
    assert demo._span(SearchResult(1, "a.wav", 0.9, 10.0, 20.0), 60.0) == "00:10–00:20"
    assert demo._span(SearchResult(1, "a.wav", 0.9, 0.0, 10.0), None) == "00:00–00:10"
