"""Every notebook executed headlessly by the runner (papermill) on a miniature tiny-profile run."""

import json
import re
from html.parser import HTMLParser

import matplotlib.image
import nbformat

import pandas as pd
import pytest

from salsa_lib import runner
from salsa_lib.profiles import MINIATURE_OVERRIDES as MINIATURE, NOTEBOOK_STAGES

pytestmark = pytest.mark.slow

# every figure a default run saves (results/<profile>/figures/<name>.png)
FIGURES = ("00_durations_and_caption_lengths", "00_true_matches_per_caption", "01_learning_rate_schedule",
           "01_pretraining_curve", "01_stage1_curves", "02_batch_targets", "02_estimate_quality",
           "02_example_correspondences", "03_stage2_curves", "04_stage1_vs_stage2", "04_rank_recall_curve", "04_verdict")


def test_all_notebooks_run_and_write_their_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    argv = ["--quiet"] + [x for k, v in MINIATURE.items() for x in ("-p", k, str(v))]
    assert runner.main(argv) == 0, capsys.readouterr().err
    results = tmp_path / "results" / "tiny"
    executed = sorted(p.stem for p in (results / "notebooks").glob("*.ipynb"))
    assert [name[:2] for name in executed] == sorted(NOTEBOOK_STAGES)  # every stage ran
    log = pd.read_csv(results / "run_log.csv")
    assert list(log.status) == ["ok"] * len(NOTEBOOK_STAGES)
    for notebook in sorted((results / "notebooks").glob("*.ipynb")):  # no warnings or banners for the reader
        assert stderr_outputs(notebook) == [], notebook.name

    data = pd.read_csv(results / "tables" / "data_statistics.csv")
    assert list(data.clips) == [8, 4, 4] and list(data.captions) == [40, 20, 20]
    assert json.loads((results / "data" / "data_config.json").read_text())["n_train_clips"] == 8
    members = pd.read_csv(results / "tables" / "stage1_members.csv")
    assert list(members.seed) == [409194, 409195, 409196, 409197]  # two PaSSTs, then one of each other family
    assert list(members.audio_encoder) == ["passt_small", "passt_small", "mobilenet_small", "frames_small"]
    assert members["mAP@10"].between(0, 1).all()
    quality = pd.read_csv(results / "tables" / "correspondence_quality.csv", keep_default_na=False)
    assert list(quality.estimate)[:7] == ["i = j (stage-1 assumption)", "member0", "member1", "member2", "member3",
                                          "ensemble", "mixed"]
    assert list(quality["audio encoder"])[1:5] == list(members.audio_encoder)
    assert quality.iloc[-1].estimate.startswith("truth") and quality.iloc[-1].AP == 1.0
    ensembles = pd.read_csv(results / "tables" / "02_ensembles.csv").set_index("ensemble")
    assert ensembles.loc["ensemble", "members"] == "member0, member1"
    assert ensembles.loc["mixed", "members"] == "member0, member1, member2, member3"
    comparison = pd.read_csv(results / "tables" / "stage2_vs_stage1_validation.csv")
    assert list(comparison.stage) == [1, 1, 1, 1, 2, 2, 2]
    evaluated = pd.read_csv(results / "metrics.csv")
    models = ["member0", "member1", "member2", "member3", "control_from_member0", "mixed_from_member0",
              "self_from_member0"]
    assert list(evaluated.model) == [m for m in models for _ in "bl"]
    assert list(evaluated.weights) == ["best", "last"] * len(models)
    assert list(pd.read_csv(results / "tables" / "01_pretraining_tagging.csv").metric)[0] == "tag mAP"
    verdict = pd.read_csv(results / "tables" / "verdict.csv", keep_default_na=False)
    systems = ["i = j (stage 1)", "control", "self", "mixed"]
    assert list(zip(verdict.system, verdict.weights)) == [("chance", ""), *[(s, w) for s in systems for w in ("best", "last")],
                                                          ("oracle ranking", "")]
    assert (verdict.loc[verdict.system.isin(["self", "mixed"]), "mAP@10 Δ stage 1 wins"] != "").all()
    words = (results / "tables" / "verdict_words.md").read_text()
    assert "**Best-validation weights" in words and "- mixed: " in words and "against the control" in words
    grid = json.loads((results / "stage2" / "grid.json").read_text())
    assert [run["model"] for run in grid["runs"]] == ["self_from_member0", "mixed_from_member0", "control_from_member0"]
    assert json.loads((results / "stage2" / "mixed_from_member0" / "run.json").read_text())["run"]["teacher_members"] \
        == ["member0", "member1", "member2", "member3"]
    for model in models[4:]:  # stage 2 is the stage-1 recipe run again, from the records on disk
        student = json.loads((results / "stage2" / model / "run.json").read_text())
        member = json.loads((results / "stage1" / "member0" / "run.json").read_text())
        for field in ("epochs", "warmup_epochs", "rampdown_start", "rampdown_stop", "lr_audio_encoder", "batch_size"):
            assert student["run"][field] == member["run"][field], (model, field)
        assert student["precision"] == member["precision"] and student["precision"] in ("32-true", "bf16-mixed")
    convergence = pd.read_csv(results / "tables" / "01_convergence.csv")
    assert list(convergence.member) == [f"member{k} ({family})" for k, family in enumerate(members.audio_encoder)]
    assert convergence["rise over the last quarter (points)"].isna().all()  # one epoch: no rise to measure
    assert not (results / "tables" / "04_readme_example_queries.csv").exists()  # synthetic clips have no Freesound ids
    assert (evaluated.split == "test").all() and evaluated["multi mAP@10"].between(0, 1).all()
    assert (results / "tables" / "04_example_queries.csv").exists()
    demo_queries = pd.read_csv(results / "tables" / "05_example_queries.csv")
    assert len(demo_queries) == 3 * 4 and set(demo_queries["rank"]) == {1, 2, 3, 4}  # 3 queries, top 5 of 4 clips
    assert sorted(p.stem for p in (results / "figures").glob("*.png")) == sorted(FIGURES)
    for figure in FIGURES:  # each one opens as an image of a readable size, not an empty canvas
        image = matplotlib.image.imread(results / "figures" / f"{figure}.png")
        assert image.shape[0] >= 200 and image.shape[1] >= 300, (figure, image.shape)
        assert image[..., :3].std() > 0.05, f"{figure}: the image is (nearly) blank"
    for notebook in sorted((results / "notebooks").glob("*.ipynb")):  # quiet: no echoed return values
        assert "PosixPath(" not in _output_text(notebook), notebook.name
    demo = _output_text(results / "notebooks" / "05_query_demo.ipynb")
    assert re.search(r"model: stage 2: (self|mixed)_from_member0", demo) and "SALSA: distilled" in demo  # SALSA
    assert demo.count("<audio controls") == 3 and demo.count("<img") >= 3  # one player and spectrogram per query

    assert runner.main(argv) == 0  # everything current: nothing reruns
    assert capsys.readouterr().out.count("up to date, skipped") == len(NOTEBOOK_STAGES)

    # determinism drill: the whole profile again from scratch (--force retrains every model) with the
    # same seeds gives identical tables, metrics included; only timings and dates may differ
    first = _tables(results)
    assert runner.main(argv + ["--force"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 0
    second = _tables(results)
    assert first.keys() == second.keys() and "metrics.csv" in first
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name], obj=name)

    stage2_text = _output_text(results / "notebooks" / "03_stage2.ipynb")
    assert "Stage 2 runs the stage-1 recipe again" in stage2_text  # one sentence, not a table of True
    assert "On validation, " in stage2_text and "not a finding" in stage2_text  # the validation table, read
    problems = {p.name: hygiene_problems(p) for p in sorted((results / "notebooks").glob("*.ipynb"))}
    assert not any(problems.values()), problems  # what a reader sees: no noise, one unit, a small file


def stderr_outputs(path) -> list[str]:
    """What a notebook's cells wrote to stderr, progress bars (tqdm's ``|...| n/N``) left out."""
    notebook = nbformat.read(path, as_version=4)
    texts = [output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
             if output.get("name") == "stderr"]
    return [text for text in texts if not re.fullmatch(r"(\s*[^\n]*\|[^\n]*\| *\d+/\d+[^\n]*\s*)+", text)]


MAX_NOTEBOOK_BYTES = 1_500_000  # an executed notebook a reader opens on the web: a few figures and players
METRIC_HEADER = re.compile(r"mAP|R@\d|\bAP\b|ROC-AUC|accuracy|exactly right")
# a percent with two decimals, a pair of them ("ROC-AUC / AP"), with an optional spread; n/a; or a blank cell
PERCENT_CELL = re.compile(r"-?\d+\.\d\d( / -?\d+\.\d\d)?( ± (\d+\.\d\d|n/a))?|n/a|")
NOISE = {"object repr": re.compile(r"\w+Config\(|<[\w.]+ object at 0x[0-9a-f]+>"),
         "progress bar": re.compile(r"%\||it/s")}


def hygiene_problems(path) -> list[str]:
    """What breaks the notebooks' rules for readers: object reprs and progress bars (a tqdm widget's text
    included) in any text output, a metric column of a shown table that is not percent with two decimals (or a
    fraction with many decimals anywhere in a table), a "training precision:" line printed twice, a
    notebook over ``MAX_NOTEBOOK_BYTES``."""
    problems = [f"{path.stat().st_size} bytes"] if path.stat().st_size > MAX_NOTEBOOK_BYTES else []
    notebook = nbformat.read(path, as_version=4)
    texts, tables = [], []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            texts.append(output.get("text", "") + "".join(data.get("text/plain", "")))
            tables += _html_tables("".join(data.get("text/html", "")))
    for name, pattern in NOISE.items():
        problems += [f"{name}: {match.group(0)!r}" for text in texts for match in pattern.finditer(text)]
    lines = [line for text in texts for line in text.splitlines() if line.startswith("training precision:")]
    problems += [f"printed {lines.count(line)} times: {line}" for line in sorted(set(lines)) if lines.count(line) > 1]
    for header, rows in tables:
        for column, name in enumerate(header):
            cells = [row[column] for row in rows if column < len(row)]
            if METRIC_HEADER.search(name) and ("%" not in name or not all(PERCENT_CELL.fullmatch(c) for c in cells)):
                problems.append(f"column {name!r} is not in percent with two decimals: {cells}")
            problems += [f"column {name!r}: fraction {c}" for c in cells if re.fullmatch(r"-?0\.\d{5,}", c)]
    return problems


class _TableReader(HTMLParser):
    """The cells of the HTML tables pandas displays: each table as (header, rows), row index cells left out."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell, self.part = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(([], []))
        elif tag in ("thead", "tbody"):
            self.part = tag
        elif tag == "tr" and self.tables:
            self.row = []
        elif tag in ("th", "td"):
            self.cell = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell is not None:
            if self.part == "thead" or tag == "td":  # a body row's th cells are its index
                self.row.append(self.cell.strip())
            self.cell = None
        elif tag == "tr" and self.tables:
            header, rows = self.tables[-1]
            if self.part == "thead" and not header:
                header.extend(self.row)
            elif self.part == "tbody":
                rows.append(self.row)


def _html_tables(html: str) -> list[tuple[list[str], list[list[str]]]]:
    """Each table's column names (the first header row, aligned on its data cells) and its data rows."""
    reader = _TableReader()
    reader.feed(html)
    tables = []
    for header, rows in reader.tables:
        width = max((len(row) for row in rows), default=0)
        tables.append((header[len(header) - width:], rows))
    return tables


def _output_text(path) -> str:
    """Everything a notebook's cells output: streams, plain text and HTML."""
    notebook = nbformat.read(path, as_version=4)
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            for kind in ("text/plain", "text/html"):
                value = output.get("data", {}).get(kind, "")
                texts.append("".join(value) if isinstance(value, list) else value)
    return "\n".join(texts)


def _tables(results) -> dict[str, pd.DataFrame]:
    """Every CSV result of a run without its wall-clock columns."""
    tables = {}
    for path in sorted([results / "metrics.csv", *(results / "tables").glob("*.csv")]):
        table = pd.read_csv(path)
        clock = [c for c in table.columns if any(w in c.lower() for w in ("second", "time", "date", "when"))]
        tables[path.name] = table.drop(columns=clock)
    return tables


def test_hygiene_rules_catch_each_kind_of_noise(tmp_path):
    """The rules above on a made-up executed notebook: each kind of noise is named, clean outputs pass."""
    def table(header, rows):
        body = "".join(f"<tr><th>{k}</th>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                       for k, row in enumerate(rows))
        html = ("<table><thead><tr><th></th>" + "".join(f"<th>{h}</th>" for h in header)
                + f"</tr></thead><tbody>{body}</tbody></table>")
        return nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": "a table"})

    def stream(text):
        return nbformat.v4.new_output("stream", name="stdout", text=text)

    clean = [table(["model", "mAP@10 (%)", "val R@1 (%)"], [["a", "54.58", "30.00 ± n/a"]]),
             stream("training precision: 32-true\n")]
    noisy = [nbformat.v4.new_output("display_data", data={"text/plain": "Stage2Config(profile='tiny')"}),
             stream("decoding:  50%|#####     | 4/8 [00:01<00:01, 3.2it/s]\n"),
             table(["member", "R@1", "R@10 (%)", "seconds"], [["0", "0.30", "100.0", "0.545833"]]),
             stream("training precision: 32-true\n"), stream("training precision: 32-true\n")]
    found = {}
    for name, outputs in (("clean", clean), ("noisy", noisy)):
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=outputs)])
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
        found[name] = hygiene_problems(tmp_path / f"{name}.ipynb")
    assert found["clean"] == []
    problems = "\n".join(found["noisy"])
    for expected in ("object repr: 'Stage2Config('", "progress bar: '%|'", "progress bar: 'it/s'", "column 'R@1'",
                     "column 'R@10 (%)'", "fraction 0.545833", "printed 2 times: training precision: 32-true"):
        assert expected in problems, (expected, problems)
    (tmp_path / "big.ipynb").write_bytes((tmp_path / "clean.ipynb").read_bytes() + b" " * MAX_NOTEBOOK_BYTES)
    assert hygiene_problems(tmp_path / "big.ipynb") == [f"{(tmp_path / 'big.ipynb').stat().st_size} bytes"]
