"""Pipeline configuration: one frozen pydantic model per section, one YAML file per
pipeline, one module per layer (data, retrieval, ranking, evaluation, registry,
experiments) and the whole pipeline's in `pipeline`.

Unknown keys are refused so that a typo in a YAML file fails loudly instead of being ignored.
"""

from components.config.base import (
    MODEL_NAME_PATTERN,
    CalendarDate,
    Duration,
    Name,
    StrictModel,
    calendar_date,
    model_name,
    positive_duration,
)
from components.config.data import (
    ColumnMapping,
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    SourceConfig,
    SplitConfig,
    SyntheticSourceConfig,
    ValidationConfig,
)
from components.config.evaluation import (
    ACCURACY_METRICS,
    COMPARED_EXPOSURE,
    COMPARED_METRICS,
    FAIRNESS_METRICS,
    BaselinesConfig,
    EvaluationConfig,
    metric_k,
)
from components.config.experiments import (
    ExperimentConfig,
    ExplorationConfig,
    MarketSimulationConfig,
    OnlineMetric,
)
from components.config.pipeline import (
    ConfigError,
    ExecutionConfig,
    PipelineConfig,
    config_hash,
    describe_errors,
    load_config,
)
from components.config.ranking import (
    LabelHoldout,
    ModelConfig,
    RankerConfig,
    recommender_line,
)
from components.config.registry import (
    OffPolicyGateConfig,
    PromotionConfig,
    RegistryConfig,
)
from components.config.retrieval import (
    AnnoyConfig,
    CandidatesConfig,
    CovisitationConfig,
    EaseConfig,
    GraphFilterConfig,
    IalsConfig,
    PopularityConfig,
    Rp3BetaConfig,
    SourceName,
    TwoTowerConfig,
)
from components.config.serving import RankedListsConfig, ServingConfig

__all__ = [
    "ACCURACY_METRICS",
    "COMPARED_EXPOSURE",
    "COMPARED_METRICS",
    "FAIRNESS_METRICS",
    "MODEL_NAME_PATTERN",
    "AnnoyConfig",
    "BaselinesConfig",
    "CalendarDate",
    "CandidatesConfig",
    "ColumnMapping",
    "ConfigError",
    "CovisitationConfig",
    "Duration",
    "EaseConfig",
    "EvaluationConfig",
    "ExecutionConfig",
    "ExperimentConfig",
    "ExplorationConfig",
    "FixedSplitSourceConfig",
    "GraphFilterConfig",
    "IalsConfig",
    "InteractionsFileSourceConfig",
    "LabelHoldout",
    "MarketSimulationConfig",
    "ModelConfig",
    "MovieLens100kSourceConfig",
    "Name",
    "OffPolicyGateConfig",
    "OnlineMetric",
    "PipelineConfig",
    "PopularityConfig",
    "PromotionConfig",
    "RankedListsConfig",
    "RankerConfig",
    "RegistryConfig",
    "Rp3BetaConfig",
    "ServingConfig",
    "SourceConfig",
    "SourceName",
    "SplitConfig",
    "StrictModel",
    "SyntheticSourceConfig",
    "TwoTowerConfig",
    "ValidationConfig",
    "calendar_date",
    "config_hash",
    "describe_errors",
    "load_config",
    "metric_k",
    "model_name",
    "positive_duration",
    "recommender_line",
]
