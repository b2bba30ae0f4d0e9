#!/usr/bin/env bash
# Create the process work pool, deploy everything in prefect.yaml, and start a worker.
# Needs a Prefect server: `prefect server start` in another terminal and
# `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`.
set -euo pipefail
cd "$(dirname "$0")/.."
export REWEAR_PROJECT_DIR="${REWEAR_PROJECT_DIR:-$PWD}"
POOL="${REWEAR_WORK_POOL:-rewear-local}"
PREFECT=".venv/bin/prefect"
"$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process
"$PREFECT" --no-prompt deploy --all
exec "$PREFECT" worker start --pool "$POOL"
