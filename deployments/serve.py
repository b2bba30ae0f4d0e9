"""One machine, no worker and no work pool: serve the three flows on their schedules from
this long-running process (`prefect.serve`). Runs execute in this process's threads; a
Prefect server (or Prefect's temporary local one) records them.

    .venv/bin/python deployments/serve.py [--config configs/synthetic.yaml]

Same schedules as prefect.yaml; one run at a time per deployment.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.yaml", help="pipeline YAML")
    args = parser.parse_args()
    os.chdir(PROJECT)
    os.environ.setdefault("REWEAR_HOME", str(PROJECT / ".rewear"))
    home = Path(os.environ["REWEAR_HOME"]).resolve()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "prefect" / "storage"))

    from prefect import serve

    from flows.monitor import monitor
    from flows.refresh_index import refresh_index
    from flows.retrain import retrain

    pipeline = {"config_path": args.config, "overrides": {}}
    serve(
        retrain.to_deployment(
            name="daily-served", cron="0 3 * * *", parameters=pipeline, concurrency_limit=1
        ),
        refresh_index.to_deployment(
            name="hourly-served", cron="20 * * * *", parameters=pipeline, concurrency_limit=1
        ),
        monitor.to_deployment(
            name="daily-served",
            cron="0 6 * * *",
            parameters={**pipeline, "thresholds": {}},
            concurrency_limit=1,
        ),
    )


if __name__ == "__main__":
    main()
