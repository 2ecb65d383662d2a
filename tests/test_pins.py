"""One source of truth for versions: environment.yml must pin exactly what requirements.txt pins."""

import re
from pathlib import Path

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

    for name, pinned in _requirements(ROOT / "requirements.txt").items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"
