"""The bundle on disk: the folder of native-format artifacts a served model is, and its integrity.

`build_bundle` writes what inference needs (recent popularity, the listings with their
availability, each user's masked items and, for the two-tower kind, the encoder's
state_dict + vocabularies, the Annoy index over available listings and the users' recent
histories; with a ranker, the two-stage model's folder). `bundle.json` is the manifest: the
format, the model kind, the metadata and, under `files`, the sha256 and size of every other
file. `verify_bundle` checks them all before any file is parsed, so a corrupt or truncated
file is one `BundleError` naming it (a truncated LightGBM model would otherwise abort the
process). A format-1 bundle (written before checksums) still loads, with a warning.

Reading a bundle and answering requests from it is `components.serving.recommender`; request
parsing and limits are `components.serving.request_parsing`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from components.retrieval.popularity import RecentPopularity
from components.store import read_json, write_json

#: 2: `bundle.json` lists every file's sha256 and size (`files`); 1 had no checksums.
BUNDLE_FORMAT = 2
UNCHECKED_FORMAT = 1
MANIFEST = "bundle.json"
#: The model kinds a manifest names (`model_kind`); each is also the `source` of the answers
#: that kind gives.
POPULARITY_SOURCE = "recent_popularity"
TWO_TOWER_SOURCE = "two_tower"
TWO_STAGE_DIR = "two_stage"


log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle folder is not one this code can trust: missing, corrupt or of another
    format; the message names the file and what to do."""


def build_bundle(
    folder: Path,
    model: RecentPopularity,
    items: pd.DataFrame,
    available: pd.Series,
    user_exclusions: pd.DataFrame,
    metadata: dict[str, object],
    *,
    encoder_dir: Path | None = None,
    index_dir: Path | None = None,
    history: pd.DataFrame | None = None,
    two_stage_dir: Path | None = None,
    seal: bool = True,
) -> None:
    """Write the bundle into `folder` (the caller makes it atomic); `seal`: record every
    file's checksum in the manifest (False for a caller that adds files, then seals).

    With `encoder_dir` and `index_dir` (two-tower kind) the bundle also holds the encoder,
    the index over the available listings, and `history` (each user's recent interactions,
    what the user tower pools at request time); popularity stays as the fallback.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model")
    catalogue = items.copy()
    catalogue["available"] = available.to_numpy(bool)
    catalogue.to_parquet(folder / "items.parquet", index=False)
    user_exclusions[["user_id", "item_id"]].drop_duplicates().to_parquet(
        folder / "user_exclusions.parquet", index=False
    )
    kind = POPULARITY_SOURCE
    if encoder_dir is not None and index_dir is not None and history is not None:
        kind = TWO_TOWER_SOURCE
        shutil.copytree(encoder_dir, folder / "encoder")
        shutil.copytree(index_dir, folder / "index")
        history.to_parquet(folder / "history.parquet", index=False)
    if two_stage_dir is not None:
        # Retrieval stack + features + LightGBM booster: ranks the users it has history for.
        shutil.copytree(two_stage_dir, folder / TWO_STAGE_DIR)
    write_json(
        folder / MANIFEST,
        {
            "format": BUNDLE_FORMAT,
            "model_kind": kind,
            "ranker": two_stage_dir is not None,
            **metadata,
        },
    )
    if seal:
        seal_bundle(folder)


def file_checksums(folder: Path) -> dict[str, dict[str, object]]:
    """sha256 and size of every file under `folder` but the manifest (POSIX relative paths)."""
    folder = Path(folder)
    checksums: dict[str, dict[str, object]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != MANIFEST:
            checksums[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    return checksums


def seal_bundle(folder: Path) -> None:
    """Record every file's checksum in the manifest; call again after adding files."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    write_json(
        folder / MANIFEST,
        {**manifest, "format": BUNDLE_FORMAT, "files": file_checksums(folder)},
    )


def verify_bundle(folder: Path) -> dict[str, object]:
    """The manifest of a bundle whose every file matches its checksum; else `BundleError`
    naming the first missing, truncated, altered or unlisted file. Nothing is parsed but
    the manifest, so corrupt model files never reach LightGBM, torch or Annoy."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{folder} is not a rewear bundle: it has no {MANIFEST}. Pass a registered "
            "version (models:/rewear@champion, models:/rewear/3) or a folder that "
            "`rewear retrain` wrote"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(
            f"bundle manifest {manifest_path} is corrupt ({error}); download the version "
            "again or retrain"
        ) from error
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle manifest {manifest_path} is not a JSON object; retrain")
    found = manifest.get("format")
    if found == UNCHECKED_FORMAT:
        log.warning(
            "bundle at %s is format 1, written before bundles carried checksums: its files "
            "are not verified; retrain to replace it",
            folder,
        )
        return manifest
    if found != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle at {folder} has format {found}, this code reads {BUNDLE_FORMAT}; "
            "retrain or install the matching rewear version"
        )
    expected = manifest.get("files")
    if not isinstance(expected, dict) or not expected:
        raise BundleError(f"bundle manifest {manifest_path} lists no file checksums; retrain")
    for name, want in expected.items():
        _check_file(folder, manifest_path, name, want)
    actual = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    unlisted = sorted(actual - set(expected) - {MANIFEST})
    if unlisted:
        raise BundleError(
            f"bundle file {folder / unlisted[0]} is not in the manifest {manifest_path} "
            f"({len(unlisted)} unlisted); the bundle was changed after it was written: "
            "download the version again or retrain"
        )
    return manifest


def _check_file(folder: Path, manifest_path: Path, name: str, want: object) -> None:
    if (
        not isinstance(want, dict)
        or ".." in Path(name).parts
        or Path(name).is_absolute()
        or not isinstance(want.get("sha256"), str)
    ):
        raise BundleError(f"bundle manifest {manifest_path} has a bad entry for {name!r}; retrain")
    path = folder / name
    fix = "download the version again (or retrain)"
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing; {fix}")
    size = path.stat().st_size
    if isinstance(want.get("bytes"), int) and size != want["bytes"]:
        raise BundleError(
            f"bundle file {path} is {'truncated' if size < want['bytes'] else 'altered'}: "
            f"{size:,} bytes, the manifest says {want['bytes']:,}; {fix}"
        )
    if _sha256(path) != want["sha256"]:
        raise BundleError(f"bundle file {path} is corrupt: its sha256 is not the manifest's; {fix}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
