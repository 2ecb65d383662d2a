"""Provenance stored beside every trained result: code version, package versions, when and where."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version

from salsa_lib import paths


def run_metadata() -> dict:
    """The git commit, the versions of the packages that shape a result, when and on what machine."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    versions = {}
    for name in ("torch", "lightning", "transformers", "hear21passt", "numpy", "librosa"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"git_commit": commit, "versions": versions, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
