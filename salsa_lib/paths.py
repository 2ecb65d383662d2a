"""Where data and results live. Everything is relative to one root so a run can be relocated.

The root is the repository checkout unless ``SALSA_HOME`` points elsewhere (tests use a temporary
folder; a cluster user may point it at scratch space).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    return Path(os.environ.get("SALSA_HOME") or REPO_ROOT)


def data_dir() -> Path:
    return project_root() / "data"


def results_dir(profile: str) -> Path:
    return project_root() / "results" / profile


def notebooks_dir() -> Path:
    # Notebooks ship with the code, so they are found beside the package, not under SALSA_HOME.
    return REPO_ROOT / "notebooks"
