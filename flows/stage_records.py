"""Where stage cache keys are looked up, and which stored records may be reused.

A cached result is data, never code: results are written as plain JSON (`RESULT_SERIALIZER`,
no object hooks), and the record Prefect looks a key up in (`StageRecords`, under
`<result storage>/keys`) is read back only when it was written that way and every output
folder it names under REWEAR_HOME still exists. Anything else (a planted pickle, a record of
another serializer, a record whose run folder was deleted) reads as absent: the stage runs
again and overwrites it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem
from prefect.logging import get_logger
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings

from components.settings import RewearSettings

#: Task results as plain JSON: no object encoder or decoder, so reading one back imports and
#: runs nothing (a stage returns only JSON values: strings, numbers, lists, dicts).
RESULT_SERIALIZER = JSONSerializer(object_encoder=None, object_decoder=None)
#: How a stage record names that serializer (what `StageRecords` accepts).
RESULT_SERIALIZER_RECORD = json.loads(RESULT_SERIALIZER.model_dump_json())
#: The folder, inside Prefect's result storage, of the records stage keys are looked up in.
STAGE_RECORDS_FOLDER = "keys"
_logger = get_logger("rewear.orchestration")


class UntrustedRecordError(ValueError):
    """A stored stage record that must not be reused (Prefect then treats it as absent)."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def missing_outputs(result: Any, home: Path) -> list[str]:
    """The paths under `home` named anywhere in a stage's JSON result that no longer exist."""
    if isinstance(result, dict):
        return [p for value in result.values() for p in missing_outputs(value, home)]
    if isinstance(result, list):
        return [p for value in result for p in missing_outputs(value, home)]
    if isinstance(result, str) and Path(result).is_absolute():
        path = Path(result)
        if _within(path, home) and not path.exists():
            return [result]
    return []


def untrusted_reason(record: bytes, storage: Path, home: Path) -> str | None:
    """Why a stage record (Prefect's metadata JSON, its result in `storage`) cannot be
    reused, or None. Parsed with the standard library only: nothing in it is executed."""
    try:
        metadata = json.loads(record)
    except ValueError:
        return "not a JSON record"
    if not isinstance(metadata, dict) or metadata.get("serializer") != RESULT_SERIALIZER_RECORD:
        found = metadata.get("serializer") if isinstance(metadata, dict) else None
        return f"written with serializer {found!r}, not plain JSON"
    if metadata.get("storage_block_id") is not None:
        return "its result lives in a storage block, not in the local result storage"
    result_path = Path(str(metadata.get("storage_key"))).resolve()
    if not _within(result_path, storage.resolve()) or not result_path.is_file():
        return f"its result {result_path} is not a file of the result storage {storage}"
    try:
        result = json.loads(result_path.read_bytes())
    except ValueError:
        return f"its result {result_path} is not JSON"
    missing = missing_outputs(result, home)
    if missing:
        return f"its output {missing[0]} no longer exists"
    return None


class StageRecords(LocalFileSystem):
    """Where stage cache keys are looked up (the cache policies' `key_storage`): Prefect's
    local result storage `/keys`. A record is handed to Prefect only when it is one this
    project writes (plain JSON) and its outputs still exist; otherwise the read fails, which
    Prefect takes as a cache miss, and the stage runs again and rewrites the record."""

    _block_type_name = "rewear stage records"

    def _resolve_path(self, path: str) -> Path:
        folder = self.storage() / STAGE_RECORDS_FOLDER
        resolved = (folder / path).resolve()
        if not _within(resolved, folder):
            raise ValueError(f"{resolved} is outside the stage records folder {folder}")
        return resolved

    @staticmethod
    def storage() -> Path:
        """Prefect's local result storage (resolved when read: REWEAR_HOME/prefect/storage
        for every rewear entry point)."""
        return Path(get_current_settings().results.local_storage_path).expanduser().resolve()

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The record at `path` if it can be trusted (Prefect passes `_sync`; reads are
        synchronous here either way)."""
        record = self._resolve_path(path).read_bytes()
        reason = untrusted_reason(record, self.storage(), RewearSettings().root)
        if reason is not None:
            _logger.warning("stage record %s not reused (%s): the stage runs again", path, reason)
            raise UntrustedRecordError(f"stage record {path}: {reason}")
        return record

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)
