"""The benchmark scripts as modules for the tests: benchmarks/ is a folder of scripts, not a package."""

import importlib.util

from salsa_lib import paths


def load(name: str):
    """``benchmarks/<name>.py`` imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, paths.REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
