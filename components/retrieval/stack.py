"""Every candidate source fitted at one moment, with its filter: the retrieval stage as one
object that offline steps and the served bundle build, save and load the same way.

`RetrievalStack.fit` fits the candidate models named in `candidates.sources` (recent
popularity, co-visitation, EASE or iALS) from their settings there, on the history strictly
before `moment`, takes the trained two-tower encoder and Annoy index for the `two_tower`
source, and answers `candidates(user_ids)` with the merged set
(`merge_candidates`), never returning an excluded, unavailable or blocked item.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import CandidatesConfig, PipelineConfig, RankerConfig
from components.interfaces import CandidateSource, Scorer
from components.retrieval.ann_index import AnnIndex
from components.retrieval.candidate_arrays import CandidateArrays, MergedCandidates
from components.retrieval.candidate_filters import CandidateFilter
from components.retrieval.candidate_merge import merge_candidate_arrays, run_source_arrays
from components.retrieval.candidate_sources import AnnSource, CategoryPopularitySource, ScorerSource
from components.retrieval.candidate_table import CandidateTable
from components.retrieval.covisitation import Covisitation
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.ials import Ials
from components.retrieval.linear_baseline import fit_linear_baseline
from components.retrieval.persistence import load_model, save_model
from components.retrieval.popularity import RecentPopularity
from components.retrieval.rp3beta import Rp3Beta
from components.retrieval.two_tower import TrainedTwoTower, TwoTowerScorer
from components.store import read_json, write_json

#: 3: the stack's own settings (candidates, exclusions); 2: a whole pipeline config (read
#: still: registered champions hold it); 1: candidate models under baselines/.
STACK_FORMAT = 3
READABLE_FORMATS = (2, 3)


POPULARITY = "popularity"


def fit_candidate_models(
    history: pd.DataFrame, settings: CandidatesConfig, moment: pd.Timestamp | None
) -> dict[str, Scorer]:
    """Each scorer-backed source of `settings.sources`, fitted once from its own settings
    on `history` before `moment`, by source name. `category_popularity` ranks inside
    categories by the `popularity` model. `factors` (iALS beside EASE) is left out when
    `linear` is iALS already (a catalogue above `ease.max_items`): the same model twice
    would add nothing but a duplicate candidate list and feature group."""
    sources = set(settings.sources)
    models: dict[str, Scorer] = {}
    if sources & {POPULARITY, "category_popularity"}:
        models[POPULARITY] = RecentPopularity.fit(history, settings.popularity, moment)
    if "covisitation" in sources:
        models["covisitation"] = Covisitation.fit(history, settings.covisitation, moment)
    if "linear" in sources:
        models["linear"] = fit_linear_baseline(history, settings, moment)
    if "factors" in sources and not isinstance(models.get("linear"), Ials):
        models["factors"] = Ials.fit(history, settings.ials, moment)
    if "graph_filter" in sources:
        models["graph_filter"] = GraphFilter.fit(history, settings.graph_filter, moment)
    if "rp3beta" in sources:
        models["rp3beta"] = Rp3Beta.fit(history, settings.rp3beta, moment)
    return models


@dataclass
class RetrievalStack:
    history: pd.DataFrame
    items: pd.DataFrame
    moment: pd.Timestamp | None
    #: Boolean per row of `items`: recommendable at `moment`.
    available: np.ndarray
    #: The fitted candidate models by source name (popularity, covisitation, linear,
    #: factors); the two-tower source is `encoder` + `index`.
    models: dict[str, Scorer]
    #: The settings the stack was fitted with (sources, per-source depth, merge, filters).
    settings: CandidatesConfig
    #: History events whose items a user's list leaves out (None: every item they saw).
    exclude_events: tuple[str, ...] | None
    encoder: TrainedTwoTower | None = None
    index: AnnIndex | None = None
    _index_folder: Path | None = field(default=None, repr=False)
    #: Merged candidates per batch of users while `remembering_candidates` is on.
    _memo: dict[tuple[str, ...], MergedCandidates] | None = field(default=None, repr=False)
    #: Candidates this stack computed before (`serve_known_candidates`).
    _known: CandidateTable | None = field(default=None, repr=False)

    def serve_known_candidates(self, table: CandidateTable) -> None:
        """Answer `candidate_arrays` from `table` for the users it holds (candidates this
        very stack generated earlier: the run's test candidates), instead of running every
        source again; other users still go through the sources."""
        self._known = table

    @contextmanager
    def remembering_candidates(self) -> Iterator[None]:
        """Within: `candidate_arrays` of a batch of users asked before is not recomputed
        (the evaluation scores the re-ranked model and its retrieval-only order, which share
        this stack, on the same batches: candidate generation is the bulk of both)."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    @classmethod
    def fit(
        cls,
        history: pd.DataFrame,
        items: pd.DataFrame,
        moment: pd.Timestamp | None,
        available: pd.Series | np.ndarray,
        candidates: CandidatesConfig,
        exclude_events: tuple[str, ...] | None,
        *,
        encoder: TrainedTwoTower | None = None,
        index_folder: Path | None = None,
    ) -> RetrievalStack:
        if moment is not None and history["ts"].notna().any():
            history = history[history["ts"] < moment]
        history = history.reset_index(drop=True)
        return cls(
            history=history,
            items=items.reset_index(drop=True),
            moment=moment,
            available=np.asarray(available, dtype=bool),
            models=fit_candidate_models(history, candidates, moment),
            settings=candidates,
            exclude_events=exclude_events,
            encoder=encoder,
            index=None if index_folder is None else AnnIndex.load(Path(index_folder)),
            _index_folder=None if index_folder is None else Path(index_folder),
        )

    @cached_property
    def filters(self) -> CandidateFilter:
        return CandidateFilter.from_tables(
            self.history,
            self.items,
            self.available,
            self.settings,
            self.exclude_events,
        )

    @cached_property
    def vectors(self) -> TwoTowerScorer | None:
        """Two-tower user and item vectors at `moment` (None without an encoder)."""
        if self.encoder is None:
            return None
        return TwoTowerScorer(self.encoder, self.items, self.history, self.moment)

    @cached_property
    def sources(self) -> list[CandidateSource]:
        settings = self.settings
        item_ids = self.items["item_id"].astype(str).tolist()
        sources: list[CandidateSource] = []
        for name in settings.sources:
            if name == "two_tower":
                if self.vectors is not None and self.index is not None:
                    sources.append(AnnSource(self.vectors.user_vectors, self.index, self.filters))
            elif name in self.models:
                sources.append(ScorerSource(name, self.models[name], item_ids, self.filters))
            elif name == "category_popularity" and self._has_categories:
                sources.append(
                    CategoryPopularitySource.fit(
                        self.history,
                        self.items,
                        self.models[POPULARITY],
                        settings,
                        self.filters,
                        self.moment,
                    )
                )
        return sources

    @property
    def _has_categories(self) -> bool:
        column = self.settings.category_column
        return POPULARITY in self.models and bool(self.items[column].notna().any())

    def source_arrays(self, user_ids: Sequence[str]) -> dict[str, CandidateArrays]:
        """Each source's own top `per_source` for `user_ids`, by source name."""
        per_source = self.settings.per_source
        return run_source_arrays(self.sources, user_ids, per_source)

    def candidates(self, user_ids: Sequence[str]) -> pd.DataFrame:
        """The merged candidates of `user_ids` (one row per user and item, best n each)."""
        return self.candidate_arrays(user_ids).frame()

    def candidate_arrays(
        self, user_ids: Sequence[str], hits: dict[str, CandidateArrays] | None = None
    ) -> MergedCandidates:
        """`candidates` as arrays, without building a frame (the per-request path);
        `hits`: the sources' own arrays, when the caller already ran them."""
        if hits is None and self._known is not None:
            known = self._known.take(user_ids)
            if known is not None:
                return known
        key = None
        if hits is None and self._memo is not None:
            key = tuple(str(user) for user in user_ids)
            if key in self._memo:
                return self._memo[key]
        if hits is None:
            hits = self.source_arrays(user_ids)
        settings = self.settings
        merged = merge_candidate_arrays(
            hits,
            settings.n,
            filters=None if self._sources_apply_filters else self.filters,
            rrf_k=settings.rrf_k,
            weights=settings.source_weights,
        )
        if key is not None and self._memo is not None:
            self._memo[key] = merged
        return merged

    @cached_property
    def _sources_apply_filters(self) -> bool:
        """Every source applies the stack's own filter itself, so checking the merged pairs
        again would cost a request about a millisecond for nothing."""
        return all(getattr(source, "filters", None) is self.filters for source in self.sources)

    def save(self, folder: Path) -> None:
        """History, listings, availability, each fitted baseline, encoder and index."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.history.to_parquet(folder / "history.parquet", index=False)
        self.items.assign(_available=self.available).to_parquet(
            folder / "items.parquet", index=False
        )
        for name, model in self.models.items():
            save_model(model, folder / "models" / name)
        if self.encoder is not None:
            self.encoder.save(folder / "encoder")
        if self._index_folder is not None:
            shutil.copytree(self._index_folder, folder / "index")
        write_json(
            folder / "stack.json",
            {
                "format": STACK_FORMAT,
                "moment": None if self.moment is None else self.moment.isoformat(),
                "models": list(self.models),
                "candidates": self.settings.model_dump(mode="json"),
                "exclude_events": self.exclude_events,
            },
        )

    @classmethod
    def load(cls, folder: Path) -> RetrievalStack:
        folder = Path(folder)
        meta: dict[str, Any] = read_json(folder / "stack.json")
        if meta.get("format") not in READABLE_FORMATS:
            raise ValueError(
                f"{folder} holds a retrieval stack in format {meta.get('format')}, this code "
                f"reads {READABLE_FORMATS}: retrain to rebuild it"
            )
        candidates, exclude_events = _stack_settings(meta)
        items = pd.read_parquet(folder / "items.parquet")
        index_folder = folder / "index" if (folder / "index").is_dir() else None
        return cls(
            history=pd.read_parquet(folder / "history.parquet"),
            items=items.drop(columns=["_available"]),
            moment=None if meta["moment"] is None else pd.Timestamp(meta["moment"]),
            available=items["_available"].to_numpy(dtype=bool),
            models={name: load_model(folder / "models" / name) for name in meta["models"]},
            settings=candidates,
            exclude_events=exclude_events,
            encoder=(
                TrainedTwoTower.load(folder / "encoder") if (folder / "encoder").is_dir() else None
            ),
            index=None if index_folder is None else AnnIndex.load(index_folder),
            _index_folder=index_folder,
        )


def _stack_settings(meta: dict[str, Any]) -> tuple[CandidatesConfig, tuple[str, ...] | None]:
    """(candidate settings, excluded events) of a saved stack, either format."""
    if meta["format"] == 2:
        legacy = PipelineConfig.model_validate(meta["config"])
        return legacy.model.candidates, legacy.evaluation.excluded_events
    excluded = meta["exclude_events"]
    return (
        CandidatesConfig.model_validate(meta["candidates"]),
        None if excluded is None else tuple(excluded),
    )


def legacy_ranker_config(folder: Path) -> RankerConfig | None:
    """The ranker settings a format-2 stack saved with its whole pipeline config (a model
    registered before the two-stage model kept its own); None for a newer stack."""
    meta: dict[str, Any] = read_json(Path(folder) / "stack.json")
    if meta.get("format") != 2:
        return None
    return PipelineConfig.model_validate(meta["config"]).model.ranker
