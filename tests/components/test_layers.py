"""The layers of `components/` hold: foundations at the top, one package per layer, and
each layer imports only the layers below it (so `retrieval` never imports `evaluation`,
and nothing but `pipeline` knows the chain)."""

from __future__ import annotations

import ast
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
#: Top-level modules (and the `config` package, a module per layer's settings) every
#: layer may import.
FOUNDATIONS = {
    "config",
    "settings",
    "store",
    "ids",
    "interfaces",
    "fingerprints",
    "child_processes",
    "process_ownership",
    "environment_variables",
    "memory",
}
#: What each package may import besides the foundations.
ALLOWED = {
    "data": set(),
    "retrieval": {"data"},
    "ranking": {"data", "retrieval"},
    "evaluation": {"data", "retrieval"},
    "serving": {"data", "retrieval", "ranking", "experiments"},
    "registry": {"data", "retrieval", "ranking", "experiments", "serving"},
    "experiments": {"data", "evaluation"},
    "pipeline": {
        "data",
        "retrieval",
        "ranking",
        "evaluation",
        "experiments",
        "serving",
        "registry",
    },
}


def _imported_components(path: Path) -> set[str]:
    """The `components.<name>` each import statement of `path` names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        for module in modules:
            parts = module.split(".")
            if parts[0] == "components" and len(parts) > 1:
                names.add(parts[1])
    return names


def test_only_foundations_sit_outside_a_package() -> None:
    loose = {p.stem for p in COMPONENTS.glob("*.py")} - {"__init__"}
    assert loose <= FOUNDATIONS, loose - FOUNDATIONS
    packages = {p.name for p in COMPONENTS.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED) | {"config"}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    breaches = []
    for package, allowed in ALLOWED.items():
        for path in sorted((COMPONENTS / package).rglob("*.py")):
            wrong = _imported_components(path) - FOUNDATIONS - allowed - {package}
            breaches += [f"{path.relative_to(COMPONENTS)} imports components.{w}" for w in wrong]
    assert not breaches, breaches


def test_foundations_import_no_layer() -> None:
    for name in FOUNDATIONS:
        module = COMPONENTS / f"{name}.py"
        paths = [module] if module.is_file() else sorted((COMPONENTS / name).rglob("*.py"))
        assert paths, name
        for path in paths:
            assert _imported_components(path) <= FOUNDATIONS, path


def test_the_config_vocabulary_is_what_the_evaluation_computes() -> None:
    """The config holds the metric names (a config is checked against them at load, and a
    foundation imports no layer); they must be the ones the evaluation computes."""
    from components import config
    from components.evaluation.metrics import ACCURACY_METRICS, per_user_metrics

    assert set(config.ACCURACY_METRICS) == set(ACCURACY_METRICS)
    import numpy as np
    import scipy.sparse as sp

    from components.evaluation.beyond_accuracy import beyond_accuracy_report

    ranked = np.array([[0, 1], [1, 2]])
    relevant = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]]))
    assert set(per_user_metrics(ranked, relevant, (2,))) == {
        f"{name}@2" for name in config.ACCURACY_METRICS
    }
    report = beyond_accuracy_report(
        ranked,
        k=2,
        n_recommendable=3,
        item_popularity=np.array([3.0, 2.0, 1.0]),
        category_codes=np.array([0, 1, 1]),
        seller_codes=np.array([0, 0, 1]),
        new_item_flags=np.array([True, False, False]),
        small_seller_flags=np.array([False, False, True]),
        recommendable=np.ones(3, dtype=bool),
    )
    assert set(report) == {f"{name}@2" for name in config.FAIRNESS_METRICS}


#: Where code below `components/pipeline/` may touch the environment, and why. Settings come
#: from `settings.py` (the one place `REWEAR_*` variables are declared and read) and reach
#: the code as arguments or as part of the loaded config.
ENVIRONMENT_ENTRY_POINTS = {
    # `load_config`: the environment's overrides apply once, where the config is loaded.
    "config/pipeline.py": {"RewearSettings("},
    # MLflow calls `load_context` in the model server's own process: no caller hands it the
    # serving limits.
    "serving/pyfunc.py": {"RewearSettings("},
    "serving/experiment_pyfunc.py": {"RewearSettings("},
    # Hands its own environment to the model server it starts; asks MLflow's variable
    # whether this process is that server.
    "serving/server.py": {"os.environ"},
    # Puts the environment back after a task runner or a test changed it.
    "environment_variables.py": {"os.environ"},
}
ENVIRONMENT_READS = ("os.environ", "os.getenv", "RewearSettings(", "BaseSettings")


def test_nothing_below_the_pipeline_reads_the_environment_but_its_entry_points() -> None:
    found: dict[str, set[str]] = {}
    for path in sorted(COMPONENTS.rglob("*.py")):
        name = str(path.relative_to(COMPONENTS))
        if name.startswith("pipeline/") or name == "settings.py":
            continue
        text = path.read_text()
        reads = {read for read in ENVIRONMENT_READS if read in text}
        if reads:
            found[name] = reads
    assert found == ENVIRONMENT_ENTRY_POINTS
