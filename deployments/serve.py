"""One machine, no worker: serve the retrain flow on its daily schedule from this process.

.venv/bin/python deployments/serve.py
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ.setdefault("PREFECT_HOME", os.path.abspath(".rewear/prefect"))
    from flows.retrain import retrain

    retrain.serve(
        name="daily-served",
        cron="0 3 * * *",
        parameters={"config_path": "configs/synthetic.yaml", "overrides": {}},
        tags=["rewear", "retrain"],
    )


if __name__ == "__main__":
    main()
