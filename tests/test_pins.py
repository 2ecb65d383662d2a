"""One source of truth for versions: environment.yml must pin exactly what requirements.txt pins, and
every package the code imports is pinned there (the tests' own tools in requirements-test.txt)."""

import ast
import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _requirements(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert match, f"{path.name}: {line!r} is not pinned with =="
            pins[match[1].lower()] = match[2]
    return pins


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for spec in pip_section:
        if spec.startswith("-e"):
            continue
        name, version = spec.split("==")
        pins[name.lower()] = version
    return pins


def test_environment_yml_agrees_with_requirements():
    assert _environment_pins() == _requirements(ROOT / "requirements.txt")


def test_environment_yml_installs_the_package_and_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section
    assert "prefix" not in env  # hand-written, not an export


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in {**_requirements(ROOT / "requirements.txt"), **_requirements(ROOT / "requirements-test.txt")}.items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sources(folder: Path):
    """(file, Python text) of every module and every notebook code cell below ``folder``."""
    for path in sorted(folder.rglob("*.py")):
        yield path, path.read_text()
    for path in sorted(folder.rglob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                yield path, "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def _third_party_imports(folder: Path) -> dict[str, str]:
    """Top-level module -> a file importing it (lazy imports inside functions included)."""
    local = {p.stem for p in folder.rglob("*.py")} | {"salsa_lib", "__future__"}
    found = {}
    for path, text in _sources(folder):
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("folder, files", [
    ("salsa_lib", ["requirements.txt"]), ("notebooks", ["requirements.txt"]), ("benchmarks", ["requirements.txt"]),
    ("tests", ["requirements.txt", "requirements-test.txt"]),
])
def test_every_direct_import_is_pinned(folder, files):
    pinned = {_normalised(name) for f in files for name in _requirements(ROOT / f)}
    distributions = packages_distributions()
    imports = _third_party_imports(ROOT / folder)
    assert {"torch", "numpy"} <= set(imports)  # the scan sees the imports
    unpinned = {module: where for module, where in imports.items()
                if not {_normalised(d) for d in distributions.get(module, [module])} & pinned}
    assert not unpinned, f"imported but not pinned in {' or '.join(files)} (module: a file importing it): {unpinned}"
