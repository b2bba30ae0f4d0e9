"""Annoy index over item vectors: the ANN half of two-tower retrieval.

The index is angular over L2-normalised vectors, so a query's neighbours are the items of
highest cosine similarity. Vectors that are not normalised (e.g. iALS factors) are searched
by inner product through the augmentation implicit uses (`implicit/ann/annoy.py`): each item
gets an extra coordinate sqrt(max_norm^2 - |x|^2), so that all items have the same norm and
the angle to a query (extra coordinate 0) orders items by dot product. Annoy 1.17.3's own
`dot` metric is not used: its recall is poor (fixed upstream only after that release).

Only the vectors passed are indexed: the caller passes the listings available at build
time (unsold, not blocked). Candidate sources filter again at request time, since listings
sell between two index refreshes.

Candidate sources and the served model call `AnnIndex.search`: the Annoy trees, or an exact
scan of the indexed vectors (one matrix product per block of queries) when that costs no
more than the nodes Annoy would inspect (`scan_is_cheaper`: a node costs about five
scanned items). Offline
candidate generation asks for n plus each user's exclusions, a few hundred neighbours: on
a catalogue of tens of thousands of listings the trees then inspect about as many nodes
per query, where a scan of the whole batch is one matrix product. Shallow requests on a
large catalogue stay on the trees. `query` is always Annoy (what `ann_recall` measures).

An index folder (written atomically) holds `index.ann` (memory-mapped on load),
`item_ids.parquet` (row i is Annoy item i) and `index.json` (dimensions and settings).

Defaults (AnnoyConfig: 50 trees, search_k = 4 * n_trees * k) were tuned for recall@100
against exact search on 64-dim vectors (docs/models.md, "Measurements behind the
defaults"). An inner-product index over vectors of very unequal norms (iALS factors)
needs an almost exhaustive search_k: prefer normalised vectors (the two-tower's).

Example
-------
>>> index = build_annoy_index(vectors, item_ids, config.model.annoy, folder)  # doctest: +SKIP
>>> found = AnnIndex.load(folder).query(user_vectors, k=100)  # doctest: +SKIP
>>> index.ids_at(found.positions), found.scores  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from annoy import AnnoyIndex

from components.config import AnnoyConfig
from components.retrieval.selection import top_n
from components.retrieval.user_item_scorer import batch_invariant_product
from components.store import atomic_directory, read_json, write_json

INDEX_FILE = "index.ann"
IDS_FILE = "item_ids.parquet"
META_FILE = "index.json"
#: Bumped when the folder layout changes; `AnnIndex.load` refuses other versions.
FORMAT_VERSION = 1
#: Exact search scores at most this many queries at once (memory: batch x items floats).
EXACT_BATCH = 1024
#: An exact scan scores at most this many (query, item) cells at once (4 bytes each).
SCAN_CELLS = 1 << 24
#: What one Annoy node visit costs in scanned items: 107 ns a node (get_nns_by_vector,
#: k = 230, search_k = 46k) against 21.6 ns a scanned item (matrix product and top-n) on
#: 75k clustered 64-dim vectors, 512 queries, this 2-core machine.
ITEMS_SCANNED_PER_NODE = 5


class Neighbours(NamedTuple):
    """Top-k per query: item positions in the index (-1 pads short lists) and scores.

    Scores are cosine similarities (inner products for an inner-product index), best first;
    -inf pads short lists.
    """

    positions: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class AnnIndex:
    """An Annoy forest with its id map; built in memory or memory-mapped from a folder."""

    annoy: AnnoyIndex
    #: Item id of each Annoy item (position i is Annoy item i).
    item_ids: np.ndarray
    #: Dimension of the vectors given (the Annoy index has one more when inner_product).
    dim: int
    n_trees: int
    search_k: int
    search_k_factor: float
    inner_product: bool
    #: Largest item norm (inner-product augmentation); 1.0 for an angular index.
    max_norm: float
    seed: int

    @property
    def count(self) -> int:
        return len(self.item_ids)

    @property
    def index_dim(self) -> int:
        return self.dim + 1 if self.inner_product else self.dim

    @classmethod
    def build(cls, vectors: np.ndarray, item_ids: Sequence[str], config: AnnoyConfig) -> AnnIndex:
        """Build in memory, deterministically (config seed, fixed thread count)."""
        matrix = _check_item_vectors(vectors, item_ids)
        max_norm = 1.0
        if config.inner_product:
            norms = np.linalg.norm(matrix, axis=1)
            max_norm = float(norms.max()) if len(norms) else 1.0
            extra = np.sqrt(np.clip(max_norm**2 - norms**2, 0.0, None))
            matrix = np.hstack([matrix, extra[:, None]]).astype(np.float32)
        else:
            matrix = _normalised(matrix, "vectors")
        annoy = AnnoyIndex(matrix.shape[1], "angular")
        annoy.set_seed(config.seed)
        for position, vector in enumerate(matrix):
            annoy.add_item(position, vector.tolist())
        annoy.build(config.n_trees, n_jobs=config.build_threads)
        return cls(
            annoy=annoy,
            item_ids=np.asarray([str(i) for i in item_ids], dtype=object),
            dim=int(vectors.shape[1]),
            n_trees=config.n_trees,
            search_k=config.search_k,
            search_k_factor=config.search_k_factor,
            inner_product=config.inner_product,
            max_norm=max_norm,
            seed=config.seed,
        )

    def save(self, folder: Path, *, overwrite: bool = True) -> None:
        """Write the folder atomically: a failure leaves no (or the previous) folder.

        Annoy then serves this object from the written file (it re-maps on save); use
        `AnnIndex.load(folder)` for a fresh handle.
        """
        with atomic_directory(Path(folder), overwrite=overwrite) as staging:
            pd.DataFrame({"item_id": pd.Series(self.item_ids, dtype=str)}).to_parquet(
                staging / IDS_FILE, index=False
            )
            if not self.annoy.save(str(staging / INDEX_FILE), prefault=False):
                raise OSError(f"Annoy could not write {staging / INDEX_FILE}")
            write_json(staging / META_FILE, self._meta())

    @classmethod
    def load(cls, folder: Path, *, prefault: bool = False) -> AnnIndex:
        """Memory-map an index folder (pages are read on demand unless `prefault`)."""
        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} holds no Annoy index ({META_FILE} missing); build it with "
                "build_annoy_index"
            )
        meta = read_json(folder / META_FILE)
        if meta.get("format") != FORMAT_VERSION or meta.get("metric") != "angular":
            raise ValueError(
                f"{folder / META_FILE}: format {meta.get('format')} / metric "
                f"{meta.get('metric')} is not format {FORMAT_VERSION} / angular; rebuild it"
            )
        item_ids = pd.read_parquet(folder / IDS_FILE)["item_id"].astype(str)
        annoy = AnnoyIndex(int(meta["index_dim"]), "angular")
        annoy.load(str(folder / INDEX_FILE), prefault=prefault)
        if annoy.get_n_items() != len(item_ids) or len(item_ids) != meta["count"]:
            raise ValueError(
                f"{folder}: {INDEX_FILE} has {annoy.get_n_items()} items, {IDS_FILE} "
                f"{len(item_ids)}, {META_FILE} {meta['count']}; the folder is corrupt, rebuild it"
            )
        return cls(
            annoy=annoy,
            item_ids=item_ids.to_numpy(dtype=object),
            dim=int(meta["dim"]),
            n_trees=int(meta["n_trees"]),
            search_k=int(meta["search_k"]),
            search_k_factor=float(meta["search_k_factor"]),
            inner_product=bool(meta["inner_product"]),
            max_norm=float(meta["max_norm"]),
            seed=int(meta["seed"]),
        )

    def effective_search_k(self, k: int) -> int:
        """Nodes a query for k neighbours inspects: search_k, or factor * n_trees * k."""
        if self.search_k != -1:
            return self.search_k
        return max(1, round(self.search_k_factor * self.n_trees * k))

    def scan_is_cheaper(self, k: int | np.ndarray) -> bool:
        """Whether scanning every indexed item costs no more, over these queries, than the
        nodes Annoy would inspect, a node costing `ITEMS_SCANNED_PER_NODE` scanned items:
        then an exact scan is both faster and exact.

        A batch of deep queries (e.g. 200 candidates plus each user's exclusions: search_k
        ~ 46k nodes per query) is one matrix product per block instead of thousands of
        Annoy calls up to about 230k items; shallow queries on a large catalogue, and deep
        ones beyond that size, stay on the trees (whose cost per query does not grow with
        the catalogue)."""
        depths = np.atleast_1d(np.asarray(k, dtype=np.int64))
        nodes = sum(self.effective_search_k(int(depth)) for depth in depths)
        return nodes * ITEMS_SCANNED_PER_NODE >= len(depths) * self.count

    def search(self, vectors: np.ndarray, k: int | np.ndarray) -> Neighbours:
        """The search candidate sources and the served model use: `query`'s answer,
        computed by an exact scan of the indexed vectors when that is cheaper
        (`scan_is_cheaper`), by the Annoy trees otherwise. `k` may differ per row."""
        if self.scan_is_cheaper(k):
            return self.scan(vectors, k)
        return self.query(vectors, k)

    def query(
        self, vectors: np.ndarray, k: int | np.ndarray, search_k: int | None = None
    ) -> Neighbours:
        """Top-k items per query row by the Annoy trees (one call per row; the search itself
        is C++). `k` is one depth or one per row; the result has max(k) columns.

        Rows that are zero or not finite have no direction: they get no neighbours.
        """
        queries, depths, norms, usable = self._queries(vectors, k)
        positions = np.full((len(queries), int(depths.max(initial=1))), -1, dtype=np.int64)
        scores = np.full(positions.shape, -np.inf, dtype=np.float32)
        if self.inner_product:
            queries = np.hstack([queries, np.zeros((len(queries), 1))])
        for row in np.flatnonzero(usable):
            depth = int(depths[row])
            nodes = self.effective_search_k(depth) if search_k is None else search_k
            found, distances = self.annoy.get_nns_by_vector(
                queries[row].tolist(),
                min(depth, self.count),
                search_k=nodes,
                include_distances=True,
            )
            positions[row, : len(found)] = found
            cosine = 1.0 - np.square(np.asarray(distances, dtype=np.float64)) / 2.0
            if self.inner_product:
                cosine = cosine * norms[row] * self.max_norm
            scores[row, : len(found)] = cosine
        return Neighbours(positions=positions, scores=scores)

    def scan(self, vectors: np.ndarray, k: int | np.ndarray) -> Neighbours:
        """`query`'s answer by exact search over the indexed vectors, in blocks of rows:
        cosine (inner product for an inner-product index), ties to the lower position."""
        queries, depths, norms, usable = self._queries(vectors, k)
        width = int(depths.max(initial=1))
        positions = np.full((len(queries), width), -1, dtype=np.int64)
        scores = np.full(positions.shape, -np.inf, dtype=np.float32)
        items = self._scan_matrix
        if not self.inner_product:
            queries = queries / np.where(usable, norms, 1.0)[:, None]
        queries = queries.astype(np.float32)
        rows = np.flatnonzero(usable)
        block = max(1, SCAN_CELLS // max(self.count, 1))
        depth = min(width, self.count)
        if depth == 0:  # an empty index: nothing to find
            rows = rows[:0]
        for start in range(0, len(rows), block):
            chosen = rows[start : start + block]
            found, found_scores = top_n(batch_invariant_product(queries[chosen], items.T), depth)
            positions[chosen, :depth], scores[chosen, :depth] = found, found_scores
        beyond = np.arange(width)[None, :] >= depths[:, None]
        positions[beyond], scores[beyond] = -1, -np.inf
        return Neighbours(positions=positions, scores=scores)

    def _queries(
        self, vectors: np.ndarray, k: int | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(queries, depth per row, norms, usable rows), checked."""
        queries = np.asarray(vectors, dtype=np.float64)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query vectors have shape {queries.shape}; the index expects "
                f"(n_queries, {self.dim})"
            )
        depths = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(queries),))
        if len(depths) and depths.min() < 1:
            raise ValueError(f"k must be at least 1, got {int(depths.min())}")
        norms = np.linalg.norm(queries, axis=1)
        return queries, depths, norms, np.isfinite(norms) & (norms > 0)

    @cached_property
    def _scan_matrix(self) -> np.ndarray:
        """The indexed vectors read back from Annoy (unit rows for an angular index; the
        given vectors, without the augmented coordinate, for an inner-product one), in
        float64 for `batch_invariant_product`, converted once (a scan runs only up to a few
        hundred thousand items, see `scan_is_cheaper`)."""
        matrix = np.array(
            [self.annoy.get_item_vector(position) for position in range(self.count)],
            dtype=np.float32,
        ).reshape(self.count, self.index_dim)
        if self.inner_product:
            return np.ascontiguousarray(matrix[:, : self.dim], dtype=np.float64)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float64)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Item ids at index positions (object array; None where the position is -1)."""
        positions = np.asarray(positions)
        ids = np.full(positions.shape, None, dtype=object)
        valid = positions >= 0
        ids[valid] = self.item_ids[positions[valid]]
        return ids

    def _meta(self) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "metric": "angular",
            "dim": self.dim,
            "index_dim": self.index_dim,
            "count": self.count,
            "n_trees": self.n_trees,
            "search_k": self.search_k,
            "search_k_factor": self.search_k_factor,
            "inner_product": self.inner_product,
            "max_norm": self.max_norm,
            "seed": self.seed,
        }


def build_annoy_index(
    vectors: np.ndarray,
    item_ids: Sequence[str],
    config: AnnoyConfig,
    folder: Path,
    *,
    overwrite: bool = True,
) -> AnnIndex:
    """Index `vectors` (one row per id in `item_ids`) into `folder`, atomically.

    Pass the available listings only: whatever is indexed can be retrieved. Returns the
    index memory-mapped from `folder`, i.e. exactly what a later `AnnIndex.load` sees.
    """
    AnnIndex.build(vectors, item_ids, config).save(folder, overwrite=overwrite)
    return AnnIndex.load(folder)


def exact_top_k(
    index: AnnIndex, item_vectors: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    """Exact top-k positions per query by numpy dot products, under the index's metric."""
    items = np.asarray(item_vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    if not index.inner_product:
        items = _normalised(items, "item_vectors")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = queries / np.where(norms > 0, norms, 1.0)
    k = min(k, len(items))
    top = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), EXACT_BATCH):
        block = queries[start : start + EXACT_BATCH]
        top[start : start + EXACT_BATCH] = top_n(block @ items.T, k)[0]
    return top


def ann_recall(
    index: AnnIndex,
    item_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    sample: int | None = None,
    seed: int = 0,
    search_k: int | None = None,
) -> float:
    """Recall@k of the index against exact search: mean |ANN top-k ∩ exact top-k| / k.

    `item_vectors` are the vectors indexed, in index order; `queries` are user vectors, of
    which `sample` rows (default: all) are drawn with `seed`; `search_k` overrides the
    index's (for tuning). Logged at every build, it tells whether the trees and search_k
    still suit the catalogue.
    """
    items = np.asarray(item_vectors)
    if items.shape != (index.count, index.dim):
        raise ValueError(
            f"item_vectors have shape {items.shape}, the index holds "
            f"({index.count}, {index.dim}): pass the vectors indexed, in index order"
        )
    queries = np.asarray(queries)
    if sample is not None and sample < len(queries):
        rows = np.random.default_rng(seed).choice(len(queries), size=sample, replace=False)
        queries = queries[np.sort(rows)]
    if len(queries) == 0 or index.count == 0:
        raise ValueError("ann_recall needs at least one query and one indexed item")
    k = min(k, index.count)
    exact = exact_top_k(index, items, queries, k)
    found = index.query(queries, k, search_k=search_k).positions
    hits = [len(np.intersect1d(a, e)) for a, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k)


def _check_item_vectors(vectors: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] < 1:
        raise ValueError(f"vectors must be a 2-d (items, dim) array, got shape {matrix.shape}")
    if len(item_ids) != len(matrix):
        raise ValueError(f"{len(matrix)} vectors but {len(item_ids)} item ids: pass one id per row")
    ids = pd.Index([str(i) for i in item_ids])
    if ids.has_duplicates:
        raise ValueError(
            f"item ids must be unique; repeated: {list(ids[ids.duplicated()].unique()[:5])}"
        )
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} vectors hold NaN or inf, e.g. items {list(ids[bad][:5])}"
        )
    return matrix


def _normalised(matrix: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        raise ValueError(
            f"{what}: rows {np.flatnonzero(zero)[:5].tolist()} are zero and have no direction "
            "for the angular metric; drop them or use inner_product"
        )
    return (matrix / norms).astype(np.float32)
