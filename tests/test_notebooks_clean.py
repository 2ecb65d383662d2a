"""Notebooks are committed without outputs, and each parameters cell matches its stage config."""

import ast
from pathlib import Path

import nbformat
import pytest

from salsa_lib.profiles import FORCE_STAGES, NOTEBOOK_STAGES, PROFILES

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no numbered notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_defines_exactly_the_config_fields(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assigned = [t.id for node in ast.parse(tagged[0].source).body for t in node.targets]
    stage = NOTEBOOK_STAGES[path.name[:2]]
    config = getattr(PROFILES["tiny"], stage)
    run_arguments = {"force": False} if stage in FORCE_STAGES else {}  # what run_all.sh --force sets
    assert len(assigned) == len(set(assigned)), f"{path.name}: a parameter is assigned twice"
    assert sorted(assigned) == sorted([*config.field_names(), *run_arguments]), \
        f"{path.name}: parameters cell vs {type(config).__name__}"
    # the literals in the notebook are the tiny profile's values, so JupyterLab runs it as-is
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(tagged[0].source).body for t in node.targets}
    assert values == {**config.to_params(), **run_arguments}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_sees_every_parameter(path):
    """papermill parses the parameters cell itself; a line it cannot parse would not be injectable."""
    import papermill

    found = papermill.inspect_notebook(str(path))
    stage = NOTEBOOK_STAGES[path.name[:2]]
    run_arguments = ["force"] if stage in FORCE_STAGES else []
    assert sorted(found) == sorted([*getattr(PROFILES["tiny"], stage).field_names(), *run_arguments])
