"""Set-up benchmark: what the first and a repeated ``./run_all.sh`` pay to get their environment.

Clones the repository's committed HEAD into a scratch folder (what a newcomer gets), then sources
``scripts/bootstrap.sh`` there twice with no active environment, exactly as ``run_all.sh`` does:
the first time creates ``.venv`` and installs the pinned dependencies, the second finds it current.
Records both wall times, the size of ``.venv`` and the free disk space left. pip's wheel cache is
whatever this machine has (warm after any earlier install: then nothing is downloaded), so the
figure is the set-up time on a machine that has installed these pins before; a cold cache adds
the download of about 3 GB of wheels. The scratch clone is deleted afterwards (``--keep`` keeps it).
Writes results/benchmarks/setup.json.

    .venv/bin/python benchmarks/bench_setup.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from salsa_lib import paths
from salsa_lib.files import atomic_write_json

CHECK = 'source scripts/bootstrap.sh && "$PY" -c "import salsa_lib, papermill, hear21passt, torchaudio"'


def clean_env() -> dict[str, str]:
    """No active environment, and none of this checkout's .venv on PATH: a newcomer's shell."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME"}}
    venv_bin = str(paths.REPO_ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return env


def timed_bootstrap(clone: Path, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    result = subprocess.run(["bash", "-c", CHECK], cwd=clone, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        raise SystemExit(f"bootstrap failed in {clone} (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return {"seconds": seconds, "output": result.stdout.strip().splitlines()}


def folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if not p.is_symlink() and p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone (it holds a 7 GB .venv)")
    args = parser.parse_args(argv)
    out_path = paths.results_dir("benchmarks") / "setup.json"
    scratch = Path(tempfile.mkdtemp(prefix="salsa_bench_setup_"))
    clone = scratch / "clone"
    try:
        subprocess.run(["git", "clone", "--quiet", str(paths.REPO_ROOT), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                text=True, check=True).stdout.strip()
        env = clean_env()
        print(f"fresh set-up in a clone of {commit} ...", flush=True)
        fresh = timed_bootstrap(clone, env)
        venv_gb = round(folder_bytes(clone / ".venv") / 1e9, 2)
        print(f"  {fresh['seconds']} s, .venv {venv_gb} GB; again ...", flush=True)
        again = timed_bootstrap(clone, env)
        free_gb = round(shutil.disk_usage(scratch).free / 1e9, 1)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": sys.version.split()[0], "commit": commit, "repeats": 1,
        "command": "source scripts/bootstrap.sh (as ./run_all.sh does), no active environment",
        "pip_cache": "this machine's, warm if these pins were installed before",
        "fresh_s": fresh["seconds"], "reuse_s": again["seconds"], "venv_gb": venv_gb,
        "free_disk_gb_after": free_gb,
        "reuse_printed_nothing_about_installing": not any("installing" in line for line in again["output"]),
    }
    atomic_write_json(out_path, result)
    print(f"fresh {result['fresh_s']} s, reuse {result['reuse_s']} s, .venv {venv_gb} GB; written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
