#!/usr/bin/env bash
# Set up the environment with the test tools, then run the whole test suite (slow tests included).
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh" --test
cd "$SALSA_ROOT"
_salsa_need_space "${TMPDIR:-/tmp}" 3 "the test suite (it trains small models in temporary folders)"
# salsa_lib's layers import one way (contracts: pyproject.toml, [tool.importlinter]); a violation
# stops here, naming the import.
"$(dirname "$PY")/lint-imports" --no-cache
exec "$PY" -m pytest "$@"
