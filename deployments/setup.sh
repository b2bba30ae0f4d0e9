#!/usr/bin/env bash
# Create the process work pool, deploy everything in prefect.yaml, and start a worker.
#
# Needs a Prefect server (`PREFECT_SERVER_ANALYTICS_ENABLED=false .venv/bin/prefect server
# start` in another terminal; without telemetry its SQLite start-up prints no spurious
# "database is locked" tracebacks) and
# PREFECT_API_URL pointing at it (`.venv/bin/prefect config set
# PREFECT_API_URL=http://127.0.0.1:4200/api`). Environment knobs:
#   REWEAR_PROJECT_DIR  checkout the worker runs (default: this one)
#   REWEAR_HOME         registry, artifacts, snapshots, task results (default: ./.rewear)
#   REWEAR_WORK_POOL    work pool name (default: rewear-local, as in prefect.yaml)
#   REWEAR_NO_WORKER=1  create the pool and deploy, but do not start the worker
set -euo pipefail
cd "$(dirname "$0")/.."
export REWEAR_PROJECT_DIR="${REWEAR_PROJECT_DIR:-$PWD}"
REWEAR_HOME="$(mkdir -p "${REWEAR_HOME:-$PWD/.rewear}" && cd "${REWEAR_HOME:-$PWD/.rewear}" && pwd)"
export REWEAR_HOME
# Task results (what a resumed run re-uses) live under REWEAR_HOME, not in ~/.prefect.
export PREFECT_RESULTS_LOCAL_STORAGE_PATH="${PREFECT_RESULTS_LOCAL_STORAGE_PATH:-$REWEAR_HOME/prefect/storage}"
# The components' own progress (encoder epochs, index builds) in the flow runs' logs.
export PREFECT_LOGGING_EXTRA_LOGGERS="${PREFECT_LOGGING_EXTRA_LOGGERS:-components}"
POOL="${REWEAR_WORK_POOL:-rewear-local}"
PREFECT="${PREFECT:-$REWEAR_PROJECT_DIR/.venv/bin/prefect}"

"$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 \
  || "$PREFECT" work-pool create "$POOL" --type process
"$PREFECT" --no-prompt deploy --all
if [ "${REWEAR_NO_WORKER:-0}" = "1" ]; then
  exit 0
fi
exec "$PREFECT" worker start --pool "$POOL"
