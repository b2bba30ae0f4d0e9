"""The registry's settings (`registry`): the model's name and the promotion gate."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from components.config.base import Duration, Name, StrictModel


class OffPolicyGateConfig(StrictModel):
    """Hold back, before any traffic, a challenger that the explored exposure log says is
    clearly worse: the upper end of the interval of its estimated sold listings per session
    relative to champion's lies below -`margin`. Acts only when the log has explored
    sessions with attributed sales in its last `lookback`; otherwise the check is recorded
    as skipped, with the reason."""

    enabled: bool = True
    margin: float = Field(0.10, ge=0, le=1)
    lookback: Duration = "14D"
    min_sessions: int = Field(2_000, ge=1)
    #: Share of the challenger's slots whose items lie inside champion's explored top m
    #: below which the check is skipped: the estimators count an unsupported slot as 0,
    #: so a challenger far from champion would look worse than it is.
    min_covered_slots: float = Field(0.95, ge=0, le=1)
    #: The estimator the check reads: `snpbm`, self-normalised position-based (a target's
    #: item counts wherever the explored list showed it), is the one accurate enough at the
    #: default exploration (docs/experiments.md, "Estimator accuracy").
    estimator: Literal["ips", "snips", "rips", "snrips", "dr", "pbm", "snpbm"] = "snpbm"


class PromotionConfig(StrictModel):
    """The gate that moves `champion` to a newly registered version (components.registry.
    promotion).

    The challenger's held-out model and the champion's served bundle are scored on the same
    users, on interactions neither has seen; the challenger passes when the lower end of
    the 95% paired-bootstrap interval of (challenger - champion) on `metric` is above
    `-margin` (non-inferiority). Guardrails: the version loads from the registry in a fresh
    process and answers smoke requests within `max_p99_latency_ms`, and its `coverage_metric`
    on the test window is at least `min_coverage`. Exposure guard (`exposure_guard`): the
    challenger is held back when its exposure is clearly more concentrated than champion's,
    by the same paired bootstrap over users: the lower end of the interval of challenger -
    champion seller-exposure Gini@20 above `max_seller_gini_increase`, or the upper end of
    the interval of its share of list slots on new listings@20 below
    `-max_new_listing_exposure_drop`.
    """

    metric: str = "ndcg@10"
    #: Absolute tolerance on `metric`: fresher models may be this much worse and still win.
    margin: float = Field(0.01, ge=0)
    #: Fewer evaluated users than this: the comparison is not trusted (champion stays).
    min_users: int = Field(20, ge=1)
    coverage_metric: str = "coverage@20"
    #: 0 disables the bound (a popularity model covers only ~k listings by design).
    min_coverage: float = Field(0.0, ge=0, le=1)
    #: p99 of single-user k=20 requests in the fresh process, after one warm-up pass (a
    #: busy CI machine, loose on purpose; bench/serving.py measures the served figure).
    max_p99_latency_ms: float = Field(250.0, gt=0)
    latency_requests: int = Field(50, ge=5)
    smoke_timeout_s: float = Field(300.0, gt=0)
    #: Hold back a challenger whose exposure is clearly more concentrated than champion's;
    #: false: the exposure figures are still compared and reported, not enforced.
    exposure_guard: bool = True
    #: Tolerated rise of the seller-exposure Gini@20 (0 = equal exposure, 1 = one seller).
    #: Popularity-like models show everyone nearly the same list, so their interval is a
    #: point and which sellers own this week's top items moves it: 0.05 keeps ordinary
    #: refreshes through and stops a model that favours a few sellers (docs/models.md).
    max_seller_gini_increase: float = Field(0.05, ge=0, le=1)
    #: Tolerated fall of the share of list slots (top 20) that go to new listings.
    max_new_listing_exposure_drop: float = Field(0.05, ge=0, le=1)
    #: Online promotion: the offline gate above only sets `challenger` (a first version,
    #: with no champion to test against, still becomes champion through it), and
    #: `champion` moves when an online experiment's readout passes (`experiment`).
    online: bool = False
    #: Off-policy check before any traffic (components.pipeline.off_policy).
    off_policy: OffPolicyGateConfig = OffPolicyGateConfig()


class RegistryConfig(StrictModel):
    model_name: Name = "rewear"
    experiment: str = Field("rewear", min_length=1, pattern=r"^\S(.*\S)?$")
    promotion: PromotionConfig = PromotionConfig()
