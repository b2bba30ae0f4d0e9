"""The registered model's logged requirements cover every package its logged code imports
when MLflow loads it, so `mlflow models serve` can build its environment from them."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import mlflow
from packaging.requirements import Requirement


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_packages(code_root: Path, entry: str) -> set[str]:
    """Top-level third-party names imported (at module level or inside functions) by
    `entry` and every `components` module it reaches, read from the files under
    `code_root`: the lazy imports of the bundle's loaders count too."""
    seen: set[str] = set()
    found: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        base = code_root.joinpath(*module.split("."))
        path = base.with_suffix(".py")
        path = path if path.is_file() else base / "__init__.py"
        if not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                top = name.split(".")[0]
                if top == "components":
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def test_logged_requirements_list_every_package_the_logged_code_imports(tiny_champion, tmp_path):
    mlflow.set_tracking_uri(tiny_champion)
    uri = "models:/rewear@champion"
    lines = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().splitlines()
    requirements = {
        _normalised(req.name): req
        for req in (Requirement(line) for line in lines if line and not line.startswith("#"))
    }
    model_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    # Models-from-code: MLflow runs the logged code file, and no pickle is logged.
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (model_dir / "MLmodel").read_text()
    assert not [p for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    imported = imported_packages(model_dir / "code", "components.serving.pyfunc_model")
    # Import name -> the distributions that provide it (mlflow: mlflow, mlflow-skinny, ...).
    providers = {
        name: {_normalised(dist) for dist in packages_distributions()[name]} for name in imported
    }
    # The bundle's loaders: LightGBM ranker, torch encoder, Annoy index, sparse matrices.
    assert {"lightgbm", "torch", "annoy", "implicit", "scipy", "pandas", "numpy"} <= imported
    missing = sorted(name for name, dists in providers.items() if not dists & set(requirements))
    assert not missing, f"logged requirements {sorted(requirements)} miss {missing}"
    assert "pyarrow" in requirements  # pandas reads the bundle's parquet files through it
    for name, requirement in requirements.items():
        # Pinned, and satisfied by what this environment runs (torch 2.13.0+cpu by 2.13.0).
        assert str(requirement.specifier).startswith("=="), requirement
        assert requirement.specifier.contains(version(name), prereleases=True), requirement
