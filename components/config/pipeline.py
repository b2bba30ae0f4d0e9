"""The whole pipeline's config (`PipelineConfig`), how it runs (`execution`), and how a
YAML file becomes one: dotted overrides, then the environment's, then validation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from components.config.base import Name, StrictModel
from components.config.data import SourceConfig, SplitConfig, ValidationConfig
from components.config.evaluation import (
    ACCURACY_METRICS,
    COMPARED_EXPOSURE,
    COMPARED_METRICS,
    FAIRNESS_METRICS,
    EvaluationConfig,
    metric_k,
)
from components.config.experiments import ExperimentConfig
from components.config.ranking import ModelConfig
from components.config.registry import RegistryConfig
from components.config.serving import ServingConfig
from components.settings import RewearSettings


class ExecutionConfig(StrictModel):
    """How the per-user stages (candidates, label-stage features, evaluation) are cut: into
    shards of at most `shard_users` users, each a task of its own (mapped over the Dask
    workers with REWEAR_TASK_RUNNER=dask, one after the other otherwise) writing its own
    parquet part; the parts' partial results are combined exactly. Inside a shard,
    `model.candidates.chunk_users` still bounds the memory of a step."""

    #: Users per shard (rounded down to whole chunks of `model.candidates.chunk_users`, and
    #: of the evaluation's scoring batches, when larger than one: the same batches, so the
    #: same figures, as one process): the 4k-user demo's windows are one shard each, a
    #: window of 100k users seven.
    shard_users: int = Field(16_384, ge=1)


class PipelineConfig(StrictModel):
    """Everything one `retrain` run needs."""

    name: Name
    source: SourceConfig
    validation: ValidationConfig = ValidationConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    execution: ExecutionConfig = ExecutionConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    serving: ServingConfig = ServingConfig()

    @model_validator(mode="after")
    def _promotion_metrics_are_evaluated(self) -> PipelineConfig:
        """The gate's metrics must be ones the evaluation produces at `evaluation.ks`."""
        ks = set(self.evaluation.ks)
        promotion = self.registry.promotion
        compared = [metric for metric in COMPARED_METRICS if metric_k(metric) in ks]
        if promotion.metric not in compared:
            raise ValueError(
                f"registry.promotion.metric {promotion.metric!r} is not a metric the champion "
                f"comparison produces at evaluation.ks {sorted(ks)}; use one of {compared}"
            )
        names = [*ACCURACY_METRICS, *FAIRNESS_METRICS]
        if promotion.coverage_metric not in [f"{name}@{k}" for name in names for k in ks]:
            raise ValueError(
                f"registry.promotion.coverage_metric {promotion.coverage_metric!r} is not a "
                f"metric the evaluation produces; use <name>@<k> with a name from {names} "
                f"and k from evaluation.ks {sorted(ks)} (e.g. 'coverage@{max(ks)}')"
            )
        missing = sorted({metric_k(metric) for metric in COMPARED_EXPOSURE} - ks)
        if promotion.exposure_guard and missing:
            raise ValueError(
                f"registry.promotion.exposure_guard compares exposure at k={missing}: add it "
                "to evaluation.ks or set registry.promotion.exposure_guard: false"
            )
        return self


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message says which and how."""


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply dotted overrides (`{"source.n_users": 500}`) and then the
    environment's (`RewearSettings.config_overrides`: the one place they apply), validate.

    Relative paths inside the file are resolved against the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass one of configs/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        environment = RewearSettings().config_overrides()
    except ValidationError as error:
        raise ConfigError(
            f"a REWEAR_* environment variable is invalid:\n{describe_errors(error)}"
        ) from error
    for dotted, value in {**(overrides or {}), **environment}.items():
        _set_dotted(raw, dotted, value)
    _resolve_relative_paths(raw, path.parent)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"config file {path} is invalid:\n{describe_errors(error)}") from error


def describe_errors(error: ValidationError) -> str:
    """One line per invalid value: the dotted key, the rule, and what was given."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        given = problem.get("input")
        if problem["type"] != "value_error" and not isinstance(given, dict | list):
            message += f" (got {given!r})"
        where = ".".join(str(part) for part in problem["loc"])
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    return "\n".join(lines)


def config_hash(config: PipelineConfig) -> str:
    """Stable short hash of the resolved config (recorded on runs and model versions)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    source = raw.get("source")
    if not isinstance(source, dict):
        return
    for key in ("path", "interactions", "items", "users"):
        value = source.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            source[key] = str((base / value).resolve())
