"""Bundle integrity: every file's sha256 in the manifest, checked before any file is parsed;
a corrupt, truncated, missing or unlisted file is one `BundleError` naming it."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from components.serving.bundle import (
    BUNDLE_FORMAT,
    MANIFEST,
    BundleError,
    seal_bundle,
    verify_bundle,
)
from components.serving.recommender import BundleRecommender

REPO = Path(__file__).resolve().parents[3]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_the_manifest_holds_the_sha256_and_size_of_every_other_file(tiny_bundle):
    files = _manifest(tiny_bundle)["files"]
    on_disk = sorted(
        p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()
    )
    assert sorted(files) == [name for name in on_disk if name != MANIFEST]
    assert "items.parquet" in files and "user_exclusions.parquet" in files
    for name, entry in files.items():
        data = (tiny_bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert _manifest(tiny_bundle)["format"] == BUNDLE_FORMAT == 2
    # The checksums stay out of the metadata the recommender reports.
    assert "files" not in BundleRecommender.load(tiny_bundle).metadata


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: _truncate(b / "items.parquet"), "items.parquet is truncated"),
        (lambda b: _flip_last_byte(b / "user_exclusions.parquet"), "is corrupt: its sha256"),
        (lambda b: (b / "items.parquet").unlink(), "items.parquet is missing"),
        (lambda b: (b / "items.parquet").write_bytes(b""), "items.parquet is truncated: 0 bytes"),
        (lambda b: (b / "planted.py").write_text("import os"), "planted.py is not in the manifest"),
        (lambda b: (b / MANIFEST).write_text('{"format": 2, "fil'), "manifest"),
        (lambda b: (b / MANIFEST).unlink(), "is not a rewear bundle: it has no bundle.json"),
        (lambda b: (b / MANIFEST).write_text('{"format": 99}'), "has format 99, this code reads 2"),
        (lambda b: (b / MANIFEST).write_text('{"format": 2}'), "lists no file checksums"),
    ],
    ids=[
        "truncated-parquet",
        "flipped-byte",
        "missing-file",
        "empty-file",
        "unlisted-file",
        "corrupt-manifest",
        "no-manifest",
        "other-format",
        "no-checksums",
    ],
)
def test_a_damaged_bundle_is_one_error_naming_the_file(tiny_bundle, damage, message):
    damage(tiny_bundle)
    with pytest.raises(BundleError) as raised:
        BundleRecommender.load(tiny_bundle)
    assert message in str(raised.value)
    assert str(tiny_bundle) in str(raised.value)


def test_a_manifest_entry_cannot_point_outside_the_bundle(tiny_bundle, tmp_path):
    (tmp_path / "outside.txt").write_text("x")
    manifest = _manifest(tiny_bundle)
    manifest["files"]["../outside.txt"] = {"sha256": "0" * 64, "bytes": 1}
    (tiny_bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"bad entry for '\.\./outside\.txt'"):
        verify_bundle(tiny_bundle)


def test_a_format_1_bundle_without_checksums_loads_with_a_warning(tiny_bundle, caplog):
    manifest = _manifest(tiny_bundle)
    del manifest["files"]
    (tiny_bundle / MANIFEST).write_text(json.dumps({**manifest, "format": 1}))
    with caplog.at_level(logging.WARNING, logger="components.serving.bundle"):
        recommender = BundleRecommender.load(tiny_bundle)
    assert recommender.recommend(["never-seen"], k=1)["item_id"].tolist() == ["i5"]
    assert "written before bundles carried checksums" in caplog.text


def _plant_ranker(bundle: Path) -> Path:
    """A real LightGBM model at the path a two-stage bundle's ranker is read from."""
    rng = np.random.default_rng(0)
    data = lgb.Dataset(rng.normal(size=(200, 3)), label=rng.integers(0, 2, 200))
    booster = lgb.train({"objective": "binary", "verbose": -1}, data, num_boost_round=5)
    path = bundle / "two_stage" / "ranker" / "ranker.txt"
    path.parent.mkdir(parents=True)
    booster.save_model(str(path))
    seal_bundle(bundle)
    return path


LOAD_SCRIPT = """
import sys
from components.serving.bundle import BundleError
from components.serving.recommender import BundleRecommender
try:
    BundleRecommender.load(sys.argv[1])
except BundleError as error:
    print(error)
    sys.exit(3)
"""


def test_a_truncated_lightgbm_model_is_refused_before_lightgbm_reads_it(tiny_bundle):
    ranker = _plant_ranker(tiny_bundle)
    assert "two_stage/ranker/ranker.txt" in _manifest(tiny_bundle)["files"]
    _truncate(ranker)
    # Its own process: were the file handed to LightGBM, its [Fatal] would abort the process.
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tiny_bundle)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"bundle file {ranker} is truncated" in done.stdout
    assert "Traceback" not in done.stderr
