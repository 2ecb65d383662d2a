#!/usr/bin/env bash
# Set up the environment with the test tools, then run the whole test suite (slow tests included).
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh" --test
cd "$SALSA_ROOT"
_salsa_need_space "${TMPDIR:-/tmp}" 3 "the test suite (it trains small models in temporary folders)"
exec "$PY" -m pytest "$@"
