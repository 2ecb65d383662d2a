"""The README's verdict is the study's: its table, words and figure come from the committed per-seed rows."""

import hashlib
import json
import shutil
import struct
import zlib

import pandas as pd
import pytest

from salsa_lib import paths
from salsa_lib.stages import correspondences, verdict

import benchmark_scripts


readme_verdict = benchmark_scripts.load("readme_verdict")
bench_study = benchmark_scripts.load("bench_study")
STUDY = bench_study.OUTPUT


def _block() -> str:
    readme = readme_verdict.README.read_text()
    assert readme.count(readme_verdict.STUDY_START) == 1 and readme.count(readme_verdict.STUDY_END) == 1
    return readme[readme.index(readme_verdict.STUDY_START):readme.index(readme_verdict.STUDY_END)
                  + len(readme_verdict.STUDY_END)]


def test_the_readme_shows_the_committed_study_word_for_word():
    assert _block() == readme_verdict.render_study(STUDY), \
        "README.md's study verdict differs from results/benchmarks/study/: run benchmarks/readme_verdict.py"


def test_the_study_table_is_what_its_per_seed_rows_give():
    """The stored table equals notebook 04's paired table of the committed rows (checked inside
    ``table_from_files``); the README's words are ``in_words`` of it; the study is the one the profile
    defines: 8 paired students of each kind it names, every one paired with its control and member."""
    table, seeds, study = bench_study.table_from_files(STUDY)
    assert verdict.in_words(table).strip() in _block()
    assert correspondences.quality_in_words(pd.DataFrame(study["estimates"])) in _block()
    best = seeds[seeds.weights == "best"]
    assert study["students_per_kind"] == {kind: 8 for kind in ("control", "i = j (stage 1)", "mixed", "self", "truth")}
    for kind, group in best.groupby("kind"):
        assert sorted(group.student) == list(range(8)), kind
    rows = table.set_index(["system", "weights"])
    assert rows.loc[("truth", "best"), "mAP@10 Δ control wins"].endswith("/8")
    low, high = verdict.ci_columns("mAP@10", "control")
    width = rows.loc[("truth", "best"), high] - rows.loc[("truth", "best"), low]
    assert width > 0  # reported in the closing note; no target is asserted on a measured result


def _png_text(path) -> dict[str, str]:
    """The tEXt chunks of a PNG (keyword -> text), read by the format's chunk layout, CRCs checked."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    texts, at = {}, 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body, crc = data[at + 8:at + 8 + length], struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc, f"{path}: chunk {kind!r} is damaged"
        if kind == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            texts[keyword.decode("latin-1")] = text.decode("latin-1")
        at += 12 + length
    return texts


def test_the_figure_was_drawn_from_the_committed_rows():
    digest = hashlib.sha256((STUDY / bench_study.SEEDS_FILE).read_bytes()).hexdigest()
    assert _png_text(STUDY / bench_study.FIGURE_FILE)[bench_study.SOURCE_KEY] == f"{bench_study.SEEDS_FILE} sha256 {digest}"
    assert (STUDY / bench_study.FIGURE_FILE).stat().st_size < 300_000


def test_rows_that_disagree_with_the_record_are_refused(tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(STUDY, copy)
    seeds = pd.read_csv(copy / bench_study.SEEDS_FILE)
    seeds.loc[0, "mAP@10"] += 0.01
    seeds.to_csv(copy / bench_study.SEEDS_FILE, index=False)
    with pytest.raises(ValueError, match="sha256 differs"):
        bench_study.table_from_files(copy)
    record = json.loads((copy / bench_study.RECORD_FILE).read_text())  # the record follows the rows now...
    record["seeds_sha256"] = hashlib.sha256((copy / bench_study.SEEDS_FILE).read_bytes()).hexdigest()
    (copy / bench_study.RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(AssertionError):  # ...but its table no longer is what they give
        bench_study.table_from_files(copy)
