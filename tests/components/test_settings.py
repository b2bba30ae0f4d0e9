"""Environment settings (`components.settings`): refused with the variable to fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.settings import OrchestrationSettings


def test_task_runner_settings_refuse_an_address_without_dask(monkeypatch):
    monkeypatch.setenv("REWEAR_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    with pytest.raises(ValidationError, match="REWEAR_TASK_RUNNER=dask"):
        OrchestrationSettings()
    monkeypatch.setenv("REWEAR_TASK_RUNNER", "dask")
    assert OrchestrationSettings().dask_address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("REWEAR_TASK_RUNNER", "ray")
    with pytest.raises(ValidationError, match="thread_pool"):
        OrchestrationSettings()
