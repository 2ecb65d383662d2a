"""The demo's model menu (SALSA first, chosen by validation; the released model last), its marks for true
matches and hit rates, the columns it shows, its spans."""

import json
from pathlib import Path

import pandas as pd
import pytest
import scipy.sparse as sp

from salsa_lib import runs
from salsa_lib.config import DataConfig
from salsa_lib.errors import ConfigError
from salsa_lib.search import demo, menu
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
    assert words.startswith("SALSA: distilled from the estimated correspondences of the stage-1 members of its own") \
        and "member1" in words and "24.0 %" in words
    assert "not SALSA" in demo.describe_model(models["stage 2: control_from_member0"])
    assert demo.describe_model(models["stage 1: member0"]).startswith("stage 1")
    lines = demo.menu_text(models, "stage 1: member1").splitlines()
    assert lines[:2] == ["model: stage 1: member1", "menu:"] and len(lines) == 2 + len(models)
    assert lines[2] == f"  stage 2: ensemble_from_member1: {words}"
    assert [line[:2] for line in lines[2:]].count("* ") == 1 and lines[-1].startswith("* stage 1: member1: stage 1")


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


def test_the_released_model_joins_the_menu_last_when_its_file_is_present(trained_profile, tmp_path):
    ours = list(demo.available_models(trained_profile))
    release = tmp_path / "data" / "checkpoints" / "passt_roberta.ckpt"  # the default place, under SALSA_HOME
    release.parent.mkdir(parents=True)
    release.write_bytes(b"weights")
    models = demo.available_models(trained_profile)
    assert list(models) == ours + [menu.RELEASED_ENTRY] and models[menu.RELEASED_ENTRY] == release
    assert demo.choose_model(models) == "stage 2: ensemble_from_member1"  # the profile's SALSA student stays default
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes(b"weights")
    assert demo.available_models(trained_profile, elsewhere)[menu.RELEASED_ENTRY] == elsewhere


def test_the_released_model_is_described_by_the_readme_figures():
    words = menu.describe_released()
    for part in ("PaSST-S + RoBERTa-large", "DCASE 2024", "40.11 % mAP@10", "R@1 27.69 %", "R@10 70.50 %",
                 "ClothoV2 evaluation", "not measured here"):
        assert part in words


COLLECTION = demo.Collection(Path("."), owners={"bells ring": "a.wav", "rain falls": "d.wav"},
                             matches={"bells ring": frozenset({"a.wav", "b.wav", "c.wav"})})


def _examples(rows):
    """An example table as run_examples makes it, from (query, file) rows ranked in order per query."""
    frame = pd.DataFrame(rows, columns=["query", "file"])
    return frame.assign(rank=frame.groupby("query", sort=False).cumcount() + 1, span="whole clip", score=0.5,
                        standing="better than 75 % of 5 moments", associated="", notes="")


def test_hit_rates_count_true_matches_in_the_top_k_beside_chance():
    examples = _examples([("Bells ring!", "b.wav"), ("Bells ring!", "e.wav"), ("Bells ring!", "a.wav"),
                          ("rain falls", "a.wav"), ("rain falls", "b.wav"), ("rain falls", "c.wav"),
                          ("a dog barks", "d.wav")])  # not a caption: no known truth
    rates = demo.hit_rates(examples, COLLECTION, n_files=5)
    assert list(rates["query"]) == ["Bells ring!", "rain falls", "all queries"]
    assert list(rates["true matches"]) == [2, 0, 2] and list(rates["top k"]) == [3, 3, 6]
    assert list(rates["relevant files"]) == [3, 1, 4]
    assert list(rates["hit rate %"]) == [66.67, 0.0, 33.33]
    assert list(rates["chance %"]) == [60.0, 20.0, 40.0]  # 3 and 1 of 5 files; their mean
    assert demo.hit_rates(_examples([("a dog barks", "d.wav")]), COLLECTION, 5).empty


def test_hit_rates_agree_with_the_marks():
    examples = _examples([("bells ring", f) for f in ("a.wav", "b.wav", "d.wav", "e.wav")])
    marks = [COLLECTION.mark("bells ring", f) for f in examples["file"]]
    assert marks == ["✓", "✓ true match", "✗", "✗"]
    assert demo.hit_rates(examples, COLLECTION, 5)["true matches"][0] == sum(m.startswith("✓") for m in marks)


class _Index:
    def __init__(self, files, windows):
        self.files, self.windows = files, windows

    def __len__(self):
        return self.files


def test_columns_that_say_nothing_are_not_shown():
    examples = _examples([("bells ring", "a.wav"), ("bells ring", "b.wav")])
    shown = demo.informative_columns(examples, _Index(files=5, windows=5))
    assert list(shown.columns) == ["query", "file", "rank", "score"]  # whole clips, one window each, no marks or notes
    examples.loc[0, ["span", "associated", "notes"]] = ["00:10–00:20", "✓", "the query was cut"]
    shown = demo.informative_columns(examples, _Index(files=5, windows=40))
    assert {"span", "standing", "associated", "notes"} <= set(shown.columns)


def test_the_profiles_models_are_said_to_know_only_synthetic_sounds(monkeypatch):
    configs = {"tiny": DataConfig(), "real": DataConfig(profile="real", dataset="clotho")}
    monkeypatch.setattr(menu.data_sources, "load_data_config", configs.__getitem__)
    scope = menu.model_scope("tiny")
    assert "trained on 250 synthetic clips of 5 s" in scope and "on real recordings their rankings mean nothing" in scope
    assert menu.RELEASED_ENTRY in scope
    assert menu.model_scope("real") == ""
