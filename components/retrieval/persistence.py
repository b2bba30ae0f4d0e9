"""Saving and loading fitted retrieval models in native formats (no pickles).

The served two-stage model needs the very candidate sources the ranker was trained on:
co-visitation (a sparse or dense item x item matrix), EASE (a dense item x item matrix),
GF-CF (a sparse item graph and two low-pass factor matrices), RP3beta (a sparse item
graph), iALS (two factor matrices), and recent popularity. Each is a frozen dataclass; its fields
are written one file each: `.npy` for arrays, `.npz` for sparse matrices, `.parquet` for id
indexes, and `model.json` for timestamps, configs and the class name.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel

from components.retrieval.covisitation import Covisitation
from components.retrieval.ease import Ease
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.ials import Ials
from components.retrieval.popularity import RecentPopularity
from components.retrieval.rp3beta import Rp3Beta
from components.store import read_json, write_json

MODEL_CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (Covisitation, Ease, GraphFilter, Ials, Rp3Beta)
}
FORMAT = 1


def save_model(model: Any, folder: Path) -> None:
    """Write a fitted Covisitation, Ease, GraphFilter, Ials, Rp3Beta or RecentPopularity."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, RecentPopularity):
        model.save(folder / "popularity")
        write_json(folder / "model.json", {"format": FORMAT, "class": "RecentPopularity"})
        return
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise TypeError(f"cannot save a {name}; known models: {sorted(MODEL_CLASSES)}")
    fields: dict[str, Any] = {}
    for spec in dataclasses.fields(model):
        if not spec.init:
            continue  # caches
        value = getattr(model, spec.name)
        if isinstance(value, pd.Index):
            pd.DataFrame({"id": value.astype(str)}).to_parquet(folder / f"{spec.name}.parquet")
            fields[spec.name] = {"kind": "index"}
        elif sp.issparse(value):
            # Uncompressed: zlib on a large item graph costs seconds on every stack save (a
            # retrain saves three) for a third less disk (docs/models.md).
            sp.save_npz(folder / f"{spec.name}.npz", sp.csr_matrix(value), compressed=False)
            fields[spec.name] = {"kind": "sparse"}
        elif isinstance(value, np.ndarray):
            np.save(folder / f"{spec.name}.npy", value, allow_pickle=False)
            fields[spec.name] = {"kind": "array"}
        elif isinstance(value, BaseModel):
            fields[spec.name] = {"kind": "config", "value": value.model_dump(mode="json")}
        elif value is None or isinstance(value, pd.Timestamp):
            fields[spec.name] = {
                "kind": "timestamp",
                "value": None if value is None else value.isoformat(),
            }
        else:
            raise TypeError(f"{name}.{spec.name}: cannot save a {type(value).__name__}")
    write_json(folder / "model.json", {"format": FORMAT, "class": name, "fields": fields})


def load_model(folder: Path) -> Any:
    """Load what `save_model` wrote (dense arrays in C order, ready for fast products)."""
    folder = Path(folder)
    meta = read_json(folder / "model.json")
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{folder} holds a model in format {meta.get('format')}, this code reads "
            f"format {FORMAT}: retrain to rebuild it"
        )
    if meta["class"] == "RecentPopularity":
        return RecentPopularity.load(folder / "popularity")
    cls = MODEL_CLASSES[meta["class"]]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, spec in meta["fields"].items():
        kind = spec["kind"]
        if kind == "index":
            ids = pd.read_parquet(folder / f"{name}.parquet")["id"]
            values[name] = pd.Index(ids.astype(object))
        elif kind == "sparse":
            values[name] = sp.csr_matrix(sp.load_npz(folder / f"{name}.npz"))
        elif kind == "array":
            values[name] = np.ascontiguousarray(np.load(folder / f"{name}.npy", allow_pickle=False))
        elif kind == "config":
            values[name] = hints[name].model_validate(spec["value"])
        else:
            values[name] = None if spec["value"] is None else pd.Timestamp(spec["value"])
    return cls(**values)
