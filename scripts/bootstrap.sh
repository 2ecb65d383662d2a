#!/usr/bin/env bash
# Sourced by run_all.sh and run_tests.sh: picks or builds the Python environment and exports $PY.
# Usage: source scripts/bootstrap.sh [--test]
# - An already activated environment (venv or conda) that can import the project is used as is.
# - Otherwise ./.venv is created on first use and reinstalled only when the pins change.
set -euo pipefail

SALSA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

_salsa_can_run() {  # the active interpreter already has the project and its runner
  "$1" -c "import salsa_lib, papermill, hear21passt, torchaudio" >/dev/null 2>&1
}

_salsa_pick_python() {  # a Python 3.11 to build .venv from
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$candidate"; return 0
    fi
  done
  echo "bootstrap: Python 3.11 is required (none found on PATH)." >&2
  return 1
}

_salsa_stamp() {  # changes whenever a pin or the package metadata changes
  cat "$SALSA_ROOT"/requirements.txt "$SALSA_ROOT"/pyproject.toml "$@" | sha256sum | cut -d' ' -f1
}

_salsa_pip() {  # quiet unless it fails: pip's full log is kept in .salsa-pip.log
  local py="$1"; shift
  if ! "$py" -m pip install --quiet "$@" >"$SALSA_ROOT/.salsa-pip.log" 2>&1; then
    grep -v "is ignored: it is neither" "$SALSA_ROOT/.salsa-pip.log" | tail -n 30 >&2
    echo "bootstrap: pip install failed (full log: .salsa-pip.log)" >&2
    return 1
  fi
}

_salsa_free_gb() {  # free space (GiB, rounded down) on the file system holding $1
  df -Pk "$1" | awk 'NR == 2 { print int($4 / 1048576) }'
}

_salsa_need_space() {  # fail early with a clear message instead of a cryptic "No space left" mid-way
  local dir="$1" need_gb="$2" what="$3" free_gb
  free_gb="$(_salsa_free_gb "$dir")"
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "bootstrap: $what needs about $need_gb GiB free on $dir's file system; only $free_gb GiB are free." >&2
    return 1
  fi
}

_salsa_register_kernel() {  # the kernel the runner and JupyterLab use: this environment's Python
  "$1" -m ipykernel install --sys-prefix --name salsa --display-name "Python (salsa)" >/dev/null
}

active_env="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
if [ -n "$active_env" ] && [ "$active_env" != "$SALSA_ROOT/.venv" ] && _salsa_can_run python; then
  PY="$(command -v python)"
  echo "bootstrap: using the active environment $active_env"
  if [ "$with_tests" = 1 ] && ! "$PY" -c "import pytest, importlinter" >/dev/null 2>&1; then
    _salsa_pip "$PY" -r "$SALSA_ROOT/requirements-test.txt"
  fi
  "$PY" -c "import jupyter_client.kernelspec as k; k.KernelSpecManager().get_kernel_spec('salsa')" \
    >/dev/null 2>&1 || _salsa_register_kernel "$PY"
else
  venv="$SALSA_ROOT/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv"
    "$(_salsa_pick_python)" -m venv "$venv"
  fi
  PY="$venv/bin/python"
  stamp_main="$(_salsa_stamp)"
  if [ "$(cat "$venv/.salsa-main-stamp" 2>/dev/null)" != "$stamp_main" ]; then
    _salsa_need_space "$SALSA_ROOT" 8 "installing the pinned dependencies (.venv is about 7 GiB)"
    echo "bootstrap: installing pinned dependencies into .venv (first run or changed pins)"
    start=$SECONDS
    _salsa_pip "$PY" -r "$SALSA_ROOT/requirements.txt" -e "$SALSA_ROOT"
    _salsa_register_kernel "$PY"
    echo "$stamp_main" >"$venv/.salsa-main-stamp"
    echo "bootstrap: installed in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1) in .venv)"
  fi
  if [ "$with_tests" = 1 ]; then
    stamp_test="$(_salsa_stamp "$SALSA_ROOT/requirements-test.txt")"
    if [ "$(cat "$venv/.salsa-test-stamp" 2>/dev/null)" != "$stamp_test" ]; then
      _salsa_pip "$PY" -r "$SALSA_ROOT/requirements-test.txt"
      echo "$stamp_test" >"$venv/.salsa-test-stamp"
    fi
  fi
fi
# The browser test drives Debian's Chromium: installed where we may; where the test is required
# (CI) a missing browser stops here, loudly, instead of letting the test suite skip the demo.
if [ "$with_tests" = 1 ]; then
  source "$SALSA_ROOT/scripts/chromium.sh"
  salsa_need_chromium
fi
export PY SALSA_ROOT
