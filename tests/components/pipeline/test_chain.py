"""The chain's wiring: every stage is named after the function that runs it, every step is
called with keyword arguments its signature accepts, and the five phases hand each other
what the next one reads. Stub steps stand in for the real ones (checked against the real
signatures), so the whole chain runs in well under a second."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.config import load_config
from components.pipeline import chain
from components.pipeline.report import RunReport
from components.pipeline.sharding import ShardedStep

ROOT = Path(__file__).resolve().parents[3]
CHAIN = Path(chain.__file__)

#: What each stub step returns: the fields the phases and the report read.
STUB_RESULTS: dict[str, Any] = {
    "ingest": {"uri": "raw"},
    "validate": {"uri": "validated"},
    "snapshot": {"uri": "snapshot", "snapshot_id": "s1"},
    "split": {"uri": "split"},
    "fit": {"final_model_uri": "popularity"},
    "train_encoder": {"uri": "encoder", "train_window_uri": "encoder-train"},
    "build_index": {"evaluation_index_uri": "index-eval", "serving_index_uri": "index-serve"},
    "generate_candidates.combine": {"uri": "candidates", "stack_uri": "stack"},
    "build_features.combine": {"uri": "features"},
    "train_ranker": {"uri": "ranker"},
    "assemble_two_stage": {"uri": "two-stage-eval"},
    "assemble_serving": {"uri": "two-stage-serve"},
    "evaluate.combine": {"metrics": {"ndcg@10": 0.1}},
    "compare_with_champion": None,
    "register": {"name": "rewear", "version": 1},
    "promote": {"decision": "promoted"},
}


def _step_calls() -> list[ast.Call]:
    """The `run(step, ...)` and `run.sharded(step, ...)` calls of chain.py."""
    calls = []
    for node in ast.walk(ast.parse(CHAIN.read_text())):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if (isinstance(function, ast.Name) and function.id == "run") or (
            isinstance(function, ast.Attribute)
            and function.attr == "sharded"
            and isinstance(function.value, ast.Name)
            and function.value.id == "run"
        ):
            calls.append(node)
    return calls


def test_every_stage_is_named_after_its_function_and_called_by_keyword() -> None:
    calls = _step_calls()
    assert len(calls) == 16
    for call in calls:
        # The step itself is the only positional argument; the rest go by keyword.
        assert len(call.args) == 1, ast.unparse(call)[:120]
        step = call.args[0]
        assert isinstance(step, ast.Attribute) and isinstance(step.value, ast.Name)
        module = getattr(chain, step.value.id)
        target = getattr(module, step.attr)
        name = target.name if isinstance(target, ShardedStep) else target.__name__
        assert name == step.attr, f"{step.value.id}.{step.attr} runs as stage {name!r}"


def _stub(record: list[str]) -> Callable[[str, Callable[..., Any]], Callable[..., Any]]:
    """A `Stages.wrap` that checks each call against the real step's signature and returns
    the stage's canned result instead of running it."""

    def wrap(stage: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def call(**arguments: Any) -> Any:
            inspect.signature(step).bind(**arguments)  # TypeError on a wrong keyword
            record.append(stage)
            if stage.endswith(".plan"):
                return {"shards": [{"number": 0}, {"number": 1}]}
            if stage.endswith(".shard"):
                return {"shard": arguments["shard"]["number"]}
            if stage.endswith(".combine"):
                assert [part["shard"] for part in arguments["parts"]] == [0, 1]
            return STUB_RESULTS[stage]

        return call

    return wrap


def test_the_five_phases_hand_each_other_what_they_read(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "synthetic.yaml")
    assert config.model.uses_two_tower and config.model.ranker.enabled
    assert config.model.refit_on_all_data
    record: list[str] = []
    run = chain.Stages(wrap=_stub(record))
    started = time.perf_counter()
    data = chain.data_phase(config, tmp_path, tmp_path / "snapshots", run)
    retrieval = chain.retrieval_phase(config, data.split_uri, tmp_path, run)
    ranking = chain.ranking_phase(config, data.split_uri, retrieval, tmp_path, run)
    evaluation = chain.evaluation_phase(config, data.split_uri, retrieval, ranking, tmp_path, run)
    report = RunReport.start("run-1", config)
    report.champion_comparison = chain.champion_comparison(config, data, ranking, tmp_path, run)
    published = chain.publish_phase(config, data, retrieval, ranking, report, tmp_path, run)
    assert time.perf_counter() - started < 1.0
    per_user = ("generate_candidates", "build_features", "evaluate")
    expected = []
    for stage in STUB_RESULTS:
        name = stage.split(".")[0]
        if name in per_user:
            if f"{name}.plan" not in expected:
                expected += [f"{name}.plan", f"{name}.shard", f"{name}.shard", f"{name}.combine"]
        else:
            expected.append(stage)
    assert record == expected
    assert set(run.timings_s) == {stage.split(".")[0] for stage in STUB_RESULTS}
    # What each phase handed on came from the step that made it.
    assert ranking.served == {"uri": "two-stage-serve"}
    assert retrieval.serving_index_uri == "index-serve"
    assert evaluation == {"metrics": {"ndcg@10": 0.1}}
    assert published.promotion == {"decision": "promoted"}


def test_a_wrong_keyword_is_caught_by_the_stub_check() -> None:
    from components.pipeline import data_steps

    wrap = _stub([])
    with pytest.raises(TypeError):
        wrap("ingest", data_steps.ingest)(configuration=None, run_dir=None)
