"""The served experiment: two registered versions pinned by number, units hashed into
arms, every answered slot logged.

`ExperimentRecommender` wraps two `BundleRecommender`s (the arms, copied into the
experiment model when it was registered: an alias moved during the experiment changes
nothing) and answers like either of them, with three more columns: `request_id` (one per
answered row), `variant` and `team`. In the `ab` design a unit (the user id, else the
request's `session_id`, else the request itself) is hashed with the experiment's salt into
an arm and sees that arm's list; in `interleave` every unit sees both arms' lists merged by
team-draft, each slot credited to its team; in `explore` every unit sees the control arm.
With an exploration temperature above 0 (`ab` and `explore`), each served list is a
Plackett-Luce draw from the arm's top `exploration_top_m` (components.experiments.
exploration), logged with its exact propensities so that off-policy estimators can weigh
any other ranking from these days. The slots go to the exposure log (the
experiment's `exposure_log`, day-partitioned Parquet under REWEAR_HOME by default) through
a buffer that never blocks or fails a request.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from components.experiments.assignment import assign_variants, treatment_buckets
from components.experiments.exploration import PLACKETT_LUCE, Exploration
from components.experiments.interleaving import request_rng, team_draft
from components.experiments.schema import (
    CONTROL,
    DETERMINISTIC,
    INTERLEAVED,
    SESSION_UNIT,
    TEAM_DRAFT,
    TREATMENT,
    USER_UNIT,
)
from components.serving.recommender import OUTPUT_COLUMNS, BundleRecommender, request_runs
from components.serving.request_parsing import RequestError, validate_k

SPEC_FILE = "experiment.json"
ARMS = (CONTROL, TREATMENT)
#: Columns the experiment adds to a recommender's answer.
EXPERIMENT_COLUMNS = ("request_id", "variant", "team")
#: Designs of the experiment model: A/B split, team-draft interleaving, or the control arm
#: alone, served with exploration for off-policy evaluation.
DESIGNS = ("ab", "interleave", "explore")
#: Per-slot propensity columns of an explored answer (logged, not returned).
_EXPLORED_COLUMNS = ("candidate_rank", "propensity", "prefix_propensity", "inclusion_propensity")


@dataclass(frozen=True)
class ExperimentSpec:
    """What an experiment model serves: fixed when the experiment starts."""

    experiment_id: str
    model_name: str
    control_version: int
    treatment_version: int
    design: str
    salt: str
    treatment_share: float
    exposure_log: str
    started_at: str
    #: Plackett-Luce exploration of the served lists (temperature 0: deterministic).
    exploration_top_m: int = 50
    exploration_temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"design {self.design!r}: use one of {DESIGNS}")
        treatment_buckets(self.treatment_share)
        if self.design == "explore" and self.exploration_temperature <= 0:
            raise ValueError(
                "the explore design serves Plackett-Luce draws: give "
                "experiment.exploration.temperature > 0"
            )
        if self.exploration_top_m < 1 or self.exploration_temperature < 0:
            raise ValueError(
                f"exploration top_m {self.exploration_top_m} / temperature "
                f"{self.exploration_temperature}: give top_m >= 1 and temperature >= 0"
            )

    @property
    def exploration(self) -> Exploration:
        temperature = 0.0 if self.design == "interleave" else self.exploration_temperature
        return Exploration(self.exploration_top_m, temperature)

    def version(self, arm: str) -> int:
        return self.control_version if arm == CONTROL else self.treatment_version

    def write(self, folder: Path) -> None:
        (folder / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, folder: Path) -> ExperimentSpec:
        return cls(**json.loads((Path(folder) / SPEC_FILE).read_text()))


class Arm(Protocol):
    """What an arm answers with: `BundleRecommender.recommend`'s contract."""

    def recommend(
        self,
        user_ids: Sequence[object] | None,
        k: object = 20,
        exclude_item_ids: object = (),
        recent_item_ids: Sequence[object] | None = None,
    ) -> pd.DataFrame: ...


class ExposureWriter(Protocol):
    def log(self, rows: pd.DataFrame) -> None: ...


@dataclass
class ExperimentRecommender:
    """Answers like a `BundleRecommender`, split (or interleaved) between two arms."""

    spec: ExperimentSpec
    arms: dict[str, Arm]
    exposures: ExposureWriter | None = None

    @classmethod
    def load(cls, folder: Path, exposures: ExposureWriter | None = None) -> ExperimentRecommender:
        """The experiment folder: `experiment.json` and one bundle per arm."""
        folder = Path(folder)
        spec = ExperimentSpec.read(folder)
        arms: dict[str, Arm] = {arm: BundleRecommender.load(folder / arm) for arm in ARMS}
        return cls(spec, arms, exposures)

    def recommend(
        self,
        user_ids: Sequence[object] | None,
        k: object = 20,
        exclude_item_ids: object = (),
        recent_item_ids: Sequence[object] | None = None,
        session_ids: Sequence[object] | None = None,
        served_at: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """The arms' answers for each request row, with `request_id`, `variant` and
        `team`; every slot is logged. `served_at` (UTC) is the moment to log, for replays
        and simulations (default: now)."""
        n_rows = _row_count(user_ids, recent_item_ids)
        units, kinds = _units(user_ids, session_ids, n_rows)
        request_ids = np.array([uuid.uuid4().hex for _ in range(n_rows)], dtype=object)
        if self.spec.design in ("ab", "explore"):
            variants = (
                assign_variants(units, self.spec.salt, self.spec.treatment_share)
                if self.spec.design == "ab"
                else np.full(n_rows, CONTROL, dtype=object)
            )
            answer = self._split(variants, user_ids, k, exclude_item_ids, recent_item_ids)
            if not self.spec.exploration.deterministic:
                answer = self._explored(answer, validate_k(k), request_ids)
            answer["team"] = None
        else:
            answer = self._interleave(
                request_ids, user_ids, k, exclude_item_ids, recent_item_ids, n_rows
            )
        answer["request_id"] = request_ids[answer["request"].to_numpy(np.int64)]
        logged = [name for name in _EXPLORED_COLUMNS if name in answer.columns]
        answer = answer[[*OUTPUT_COLUMNS, *EXPERIMENT_COLUMNS, *logged]].reset_index(drop=True)
        if self.exposures is not None:
            moment = pd.Timestamp.now(tz="UTC") if served_at is None else served_at
            self.exposures.log(self.exposure_rows(answer, units, kinds, moment))
        return answer.drop(columns=logged)

    def _split(
        self,
        variants: np.ndarray,
        user_ids: Sequence[object] | None,
        k: object,
        exclude_item_ids: object,
        recent_item_ids: Sequence[object] | None,
    ) -> pd.DataFrame:
        """Each arm answers its own rows in one call; answers keep the request's order."""
        parts = []
        exploration = self.spec.exploration
        depth = k if exploration.deterministic else max(validate_k(k), exploration.top_m)
        for arm in ARMS:
            rows = np.flatnonzero(variants == arm)
            if not len(rows):
                continue
            part = self.arms[arm].recommend(
                _take(user_ids, rows),
                k=depth,
                exclude_item_ids=exclude_item_ids,
                recent_item_ids=_take(recent_item_ids, rows),
            )
            part["request"] = rows[part["request"].to_numpy(np.int64)]
            part["variant"] = arm
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        answer = pd.concat(parts, ignore_index=True)
        return answer.sort_values(["request", "rank"], kind="stable", ignore_index=True)

    def _explored(self, answer: pd.DataFrame, k: int, request_ids: np.ndarray) -> pd.DataFrame:
        """Each request's list drawn from its arm's top `top_m` (the arm answered that
        deep), with the draw's propensities; the coins are seeded by the request."""
        exploration = self.spec.exploration
        request = answer["request"].to_numpy(np.int64)
        bounds, ends = request_runs(request)
        picked, ranks, marginals, prefixes, inclusions = [], [], [], [], []
        for first, end in zip(bounds, ends, strict=True):
            rng = request_rng(self.spec.salt, str(request_ids[request[first]]))
            slate = exploration.draw(int(end - first), k, rng)
            picked.append(first + slate.ranks)
            ranks.append(slate.ranks + 1)
            marginals.append(slate.marginal)
            prefixes.append(slate.prefix)
            inclusions.append(slate.inclusion)
        if not picked:
            propensities = dict.fromkeys(_EXPLORED_COLUMNS[1:], 1.0)
            return answer.assign(candidate_rank=0, **propensities).iloc[:0]
        rows = np.concatenate(picked)
        explored = answer.iloc[rows].reset_index(drop=True)
        explored["rank"] = np.concatenate([np.arange(1, len(p) + 1) for p in picked])
        explored["candidate_rank"] = np.concatenate(ranks).astype(np.int32)
        explored["propensity"] = np.concatenate(marginals)
        explored["prefix_propensity"] = np.concatenate(prefixes)
        explored["inclusion_propensity"] = np.concatenate(inclusions)
        return explored

    def _interleave(
        self,
        request_ids: np.ndarray,
        user_ids: Sequence[object] | None,
        k: object,
        exclude_item_ids: object,
        recent_item_ids: Sequence[object] | None,
        n_rows: int,
    ) -> pd.DataFrame:
        """Both arms answer every row; team-draft merges each row's two lists."""
        answers = {
            arm: self.arms[arm].recommend(
                user_ids, k=k, exclude_item_ids=exclude_item_ids, recent_item_ids=recent_item_ids
            )
            for arm in ARMS
        }
        grouped = {arm: _by_request(answer, n_rows) for arm, answer in answers.items()}
        frames = []
        size = int(k)  # validated by the arms' recommend above
        for row in range(n_rows):
            lists = {arm: grouped[arm][row] for arm in ARMS}
            merged = team_draft(
                lists[CONTROL]["item_id"].tolist(),
                lists[TREATMENT]["item_id"].tolist(),
                size,
                request_rng(self.spec.salt, str(request_ids[row])),
            )
            picked = [
                lists[team].iloc[at]
                for team, at in zip(merged.teams, merged.team_ranks, strict=True)
            ]
            if not picked:
                continue
            frame = pd.DataFrame(picked).reset_index(drop=True)
            frame["rank"] = np.arange(1, len(frame) + 1)
            frame["team"] = merged.teams
            frames.append(frame)
        answer = (
            pd.concat(frames, ignore_index=True)
            if frames
            else answers[CONTROL].iloc[0:0].assign(team=pd.Series(dtype=object))
        )
        answer["variant"] = INTERLEAVED
        return answer

    def exposure_rows(
        self,
        answer: pd.DataFrame,
        units: np.ndarray,
        kinds: np.ndarray,
        served_at: pd.Timestamp,
    ) -> pd.DataFrame:
        """One exposure-log row per answered slot, built from arrays (on the request path:
        a frame of Series conversions cost more than the answer itself)."""
        n_slots = len(answer)
        request = answer["request"].to_numpy(np.int64)
        variant = answer["variant"].to_numpy(dtype=object)
        team = answer["team"].to_numpy(dtype=object)
        credited = np.where(pd.isna(team), variant, team)
        versions = np.where(
            credited == TREATMENT,
            str(self.spec.treatment_version),
            str(self.spec.control_version),
        ).astype(object)
        moment = np.datetime64(served_at.tz_convert("UTC").tz_localize(None), "us")
        explored = "propensity" in answer.columns
        if self.spec.design == "interleave":
            policy = TEAM_DRAFT
        else:
            policy = PLACKETT_LUCE if explored else DETERMINISTIC
        return pd.DataFrame(
            {
                "request_id": answer["request_id"].to_numpy(dtype=object),
                "served_at": pd.DatetimeIndex(np.full(n_slots, moment)).tz_localize("UTC"),
                "experiment_id": np.full(n_slots, self.spec.experiment_id, dtype=object),
                "unit_id": units[request],
                "unit_kind": kinds[request],
                "variant": variant,
                "position": answer["rank"].to_numpy(np.int32),
                "item_id": answer["item_id"].to_numpy(dtype=object),
                "score": answer["score"].to_numpy(np.float64),
                "source": answer["source"].to_numpy(dtype=object),
                "team": team,
                "model_name": np.full(n_slots, self.spec.model_name, dtype=object),
                "model_version": versions,
                "policy": np.full(n_slots, policy, dtype=object),
                "propensity": answer["propensity"].to_numpy(np.float64)
                if explored
                else np.ones(n_slots),
                "prefix_propensity": answer["prefix_propensity"].to_numpy(np.float64)
                if explored
                else np.ones(n_slots),
                "inclusion_propensity": answer["inclusion_propensity"].to_numpy(np.float64)
                if explored
                else np.ones(n_slots),
                "candidate_rank": answer["candidate_rank"].to_numpy(np.int32)
                if explored
                else answer["rank"].to_numpy(np.int32),
            }
        )


def _row_count(user_ids: Sequence[object] | None, recent: Sequence[object] | None) -> int:
    for column in (user_ids, recent):
        if column is not None:
            return len(column)
    raise RequestError("the request has no rows: send `user_id` or `recent_item_ids`")


def _units(
    user_ids: Sequence[object] | None, session_ids: Sequence[object] | None, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The unit of each row: its user id; else its session key; else a key of its own
    (an anonymous request without a session is a unit by itself)."""
    units = np.empty(n_rows, dtype=object)
    kinds = np.empty(n_rows, dtype=object)
    for row in range(n_rows):
        user = None if user_ids is None else user_ids[row]
        session = None if session_ids is None else session_ids[row]
        if _present(user):
            units[row], kinds[row] = str(user), USER_UNIT
        elif _present(session):
            units[row], kinds[row] = str(session), SESSION_UNIT
        else:
            units[row], kinds[row] = f"anonymous-{uuid.uuid4().hex}", SESSION_UNIT
    return units, kinds


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and value != ""


def _take(column: Sequence[object] | None, rows: np.ndarray) -> list[object] | None:
    return None if column is None else [column[row] for row in rows]


def _by_request(answer: pd.DataFrame, n_rows: int) -> list[pd.DataFrame]:
    groups: Mapping[Any, pd.DataFrame] = dict(tuple(answer.groupby("request", sort=True)))
    empty = answer.iloc[0:0]
    return [groups.get(row, empty).reset_index(drop=True) for row in range(n_rows)]
