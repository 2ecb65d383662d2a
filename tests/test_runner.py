"""The papermill runner: parameters reach the notebooks, failures are named, current steps skip."""

import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from salsa_lib import runner
from salsa_lib.profiles import PROFILES
from salsa_lib.errors import ConfigError

TINY_DATA = PROFILES["tiny"].data


def _notebook(path, body: str, params: dict | None = None) -> None:
    """A stand-in notebook: a parameters cell (00_data's by default), then ``body``."""
    params = "\n".join(f"{k} = {v!r}" for k, v in (params or TINY_DATA.to_params()).items())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


RECORD_PARAMS = """
import json
from salsa_lib import paths
from salsa_lib.config import DataConfig
config = DataConfig.from_globals(globals())
out = paths.results_dir(config.profile) / "seen_params.json"
out.write_text(json.dumps(config.to_params()))
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path / "home"))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    return tmp_path / "home", notebooks


def test_plan_rejects_unknown_and_ill_typed_parameters():
    with pytest.raises(ConfigError, match="sed"):
        runner.plan("tiny", {"sed": "1"})
    with pytest.raises(ConfigError, match="synthetic_seed=.abc."):
        runner.plan("tiny", {"synthetic_seed": "abc"})
    with pytest.raises(ConfigError, match="--profile"):
        runner.plan("tiny", {"profile": "clotho"})
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        runner.plan("nope", {})


def test_help_lists_every_profile_and_only_overrides_the_runner_accepts(capsys):
    with pytest.raises(SystemExit) as done:
        runner.main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for name in ("tiny", "tiny-grid", "tiny-study", "clotho", "clotho-dryrun"):
        assert re.search(rf"^  {re.escape(name)} +\S", shown, flags=re.MULTILINE), name  # listed with its description
    assert set(PROFILES) == {"tiny", "tiny-grid", "tiny-study", "clotho", "clotho-dryrun"}  # a new profile: add it above
    header = (Path(runner.__file__).parent.parent / "run_all.sh").read_text()
    examples = re.findall(r"-p\s+([a-z_][a-z0-9_.]*)\s+([^\s,;)]+)", shown + header)
    assert {key for key, _ in examples} >= {"stage1.seed", "n_train_clips", "precision"}
    for key, value in examples:
        runner.plan("tiny", {key: value})  # raises ConfigError for an override the runner refuses


def test_select_from_and_only(home):
    _, notebooks = home
    _notebook(notebooks / "00_data.ipynb", "pass")
    steps = runner.plan("tiny", {"synthetic_seed": "5"}, notebooks)
    assert [s.name for s in steps] == ["00_data"] and steps[0].config.synthetic_seed == 5
    assert runner.select(steps, only="0") == steps
    with pytest.raises(ConfigError, match="no notebook numbered '07'"):
        runner.select(steps, start="07")


@pytest.mark.slow
def test_parameters_reach_the_notebook_and_current_steps_are_skipped(home, capsys):
    results, notebooks = home
    _notebook(notebooks / "00_data.ipynb", RECORD_PARAMS)
    argv = ["--notebooks-dir", str(notebooks), "--quiet", "-p", "synthetic_seed", "7", "-p", "clip_seconds", "2"]
    assert runner.main(argv) == 0
    seen = json.loads((results / "results/tiny/seen_params.json").read_text())
    assert seen == {**TINY_DATA.to_params(), "synthetic_seed": 7, "clip_seconds": 2.0}
    assert (results / "results/tiny/notebooks/00_data.ipynb").exists()
    log = pd.read_csv(results / "results/tiny/run_log.csv")
    assert list(log.status) == ["ok"] and log.seconds[0] > 0

    assert runner.main(argv) == 0  # same inputs: skipped
    assert "up to date, skipped" in capsys.readouterr().out
    assert len(pd.read_csv(results / "results/tiny/run_log.csv")) == 1

    assert runner.main(argv[:-2] + ["clip_seconds", "3"]) == 0  # changed parameter: rerun
    assert json.loads((results / "results/tiny/seen_params.json").read_text())["clip_seconds"] == 3.0
    # --force reruns every step and reaches the stages that reuse results as their ``force`` argument
    _notebook(notebooks / "01_stage1.ipynb", "from salsa_lib import paths\n"
              "(paths.results_dir(profile) / 'force.txt').write_text(repr(force))",
              {**PROFILES["tiny"].stage1.to_params(), "force": False})
    assert runner.main(argv[:-2] + ["clip_seconds", "3", "--force"]) == 0
    assert list(pd.read_csv(results / "results/tiny/run_log.csv").notebook) == ["00_data"] * 3 + ["01_stage1"]
    assert (results / "results/tiny/force.txt").read_text() == "True"
    assert runner.main(argv[:-2] + ["clip_seconds", "3"]) == 0  # a forced run leaves the steps current
    assert len(pd.read_csv(results / "results/tiny/run_log.csv")) == 4


@pytest.mark.slow
def test_failing_notebook_is_named_and_earlier_results_survive(home, capsys):
    results, notebooks = home
    _notebook(notebooks / "00_data.ipynb", RECORD_PARAMS)
    assert runner.main(["--notebooks-dir", str(notebooks), "--quiet"]) == 0
    good = (results / "results/tiny/notebooks/00_data.ipynb").read_bytes()

    _notebook(notebooks / "00_data.ipynb", "raise ValueError('the synthetic set is broken')")
    assert runner.main(["--notebooks-dir", str(notebooks), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "00_data.ipynb" in err and "ValueError: the synthetic set is broken" in err
    assert (results / "results/tiny/notebooks/00_data.ipynb").read_bytes() == good
    assert (results / "results/tiny/notebooks/00_data.failed.ipynb").exists()
    assert list(pd.read_csv(results / "results/tiny/run_log.csv").status) == ["ok", "failed"]


def test_every_notebook_names_the_kernel_the_runner_and_the_readme_use():
    """JupyterLab starts the kernel a notebook names; naming the project's kernel means no chooser
    appears and the notebook runs in the environment the runner uses (scripts/bootstrap.sh registers it)."""
    bootstrap = (Path(runner.__file__).resolve().parent.parent / "scripts" / "bootstrap.sh").read_text()
    display = re.search(rf'--name {runner.KERNEL_NAME} --display-name "([^"]+)"', bootstrap)[1]
    for path in sorted((Path(runner.__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        spec = nbformat.read(path, as_version=4).metadata.kernelspec
        assert (spec.name, spec.display_name) == (runner.KERNEL_NAME, display), path.name
    readme = (Path(runner.__file__).resolve().parent.parent / "README.md").read_text()
    assert f'"{display}"' in readme  # what the README tells users to pick in JupyterLab
