#!/usr/bin/env bash
# Reproduce the pipeline: set up the environment if needed, then run the notebooks with papermill.
#   ./run_all.sh                       embedded default (tiny profile, CPU, offline, minutes)
#   ./run_all.sh --profile clotho      the paper (ClothoV2, pretrained PaSST, roberta-large; GPU)
#   ./run_all.sh -p stage1.seed 3 --from 01   override a parameter, resume from a notebook
#   ./run_all.sh --help                all options
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
cd "$SALSA_ROOT"
exec "$PY" -m salsa_lib.runner "$@"
