"""The original README's example queries: data with source, Freesound ids from metadata, the comparison."""

import numpy as np
import pytest

from salsa_lib.data import reference_queries as rq
from salsa_lib.errors import DataError


def test_published_lists_are_data_with_their_source():
    table = rq.readme_example_queries()
    assert table.groupby("query_number").size().tolist() == [5, 5]
    first = table[table.query_number == 1].sort_values("rank")
    assert first.sound_id.tolist() == [344952, 57595, 352819, 88530, 158513]
    assert first.associated.tolist() == ["✗"] * 4 + ["✓"]
    second = table[table.query_number == 2].sort_values("rank")
    assert second.sound_id.tolist() == [366669, 38956, 187763, 98470, 157962]
    assert (second.associated == "✗").all() and table.source.str.contains("SALSA README").all()


def test_sound_ids_from_a_latin1_metadata_file(tmp_path):
    (tmp_path / "clotho_metadata_evaluation.csv").write_bytes(
        'file_name,keywords,sound_id\n"Caf\xe9, noise.wav",a;b,158513\nb.wav,c,57595.0\n'.encode("latin-1"))
    assert rq.read_sound_ids(tmp_path, "evaluation") == {"Café, noise.wav": 158513, "b.wav": 57595}
    assert rq.read_sound_ids(tmp_path, "validation") is None
    (tmp_path / "clotho_metadata_validation.csv").write_text("file_name,sound_id\na.wav,oops\n")
    with pytest.raises(DataError, match="line 2.*sound_id"):
        rq.read_sound_ids(tmp_path, "validation")


def test_top_k_mapping_and_overlap():
    split = type("Split", (), {"file_names": ["a.wav", "b.wav", "c.wav"],
                               "captions": [["x"] * 5, ["A large gathering of people are talking loudly with each other."] + ["y"] * 4,
                                            ["z"] * 5]})()
    ids = {"a.wav": 344952, "b.wav": 158513, "c.wav": 1}
    queries = rq.readme_example_queries()["query"].unique().tolist()
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    ours = rq.top_k_sound_ids(scores, split, ids, queries, k=3)
    assert ours[ours.query_number == 1].sound_id.tolist() == [158513, 1, 344952]
    assert ours[ours.query_number == 1].associated.tolist() == ["✓", "✗", "✗"]
    table = rq.compare_with_published({"m": ours}, rq.readme_example_queries())
    assert table.overlap.tolist() == [2, 0] and table.ours[0] == "✓ 158513 ✗ 1 ✗ 344952"
    assert table.published[0].endswith("✓ 158513")
