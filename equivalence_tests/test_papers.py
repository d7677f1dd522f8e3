"""papers/index.json is complete: every technique module is mapped and every mapped name exists."""

import importlib
import pkgutil
from pathlib import Path

import pytest

import papers
import reference

from .technique_cases import TECHNIQUE_CASES

ROOT = Path(__file__).resolve().parents[1]
INFRASTRUCTURE = {
    "validation",
    "persistence",
    "checkpoint",
    "checkpoint_layout",
    "config",
    "automagic_base",
    "registry",
    "paper_optimizer",
    "sharding",
}  # shared helpers
FIELDS = ("key", "technique", "title", "authors", "year", "venue", "url", "implemented", "deviations",
          "reference", "test", "notebook")  # fmt: skip


def resolve(dotted: str):
    """A module-level name or a class attribute (`module.Class.method`)."""
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return getattr(resolve(module), name)


@pytest.mark.parametrize("entry", papers.load(), ids=lambda e: e["key"])
def test_entry_is_complete_and_every_name_exists(entry):
    for field in FIELDS:
        assert entry.get(field), f"{entry['key']}: empty {field}"
    # a fast path, or why none is needed; "pending" notes go stale once the fast path ships, so none is allowed
    assert entry["optimized"] or entry.get("optimized_not_needed"), f"{entry['key']}: no optimized path or reason"
    assert not [key for key in entry if key.endswith("_pending")], f"{entry['key']}: a pending note"
    for dotted in entry["reference"] + entry["optimized"]:
        assert callable(resolve(dotted)), dotted
    path, _, func = entry["test"].partition("::")
    assert func in (ROOT / path).read_text(encoding="utf-8"), entry["test"]
    if entry.get("optimized_test"):  # the fast path against the reference
        path, _, func = entry["optimized_test"].partition("::")
        assert f"def {func}(" in (ROOT / path).read_text(encoding="utf-8"), entry["optimized_test"]
    assert (ROOT / entry["notebook"]).is_file(), entry["notebook"]
    if entry.get("oracle_test"):  # the paper's own algorithm, checked against its oracle (issue 3)
        assert entry.get("oracle") and entry.get("paper_algorithm"), entry["key"]
        path, _, func = entry["oracle_test"].partition("::")
        assert f"def {func}(" in (ROOT / path).read_text(encoding="utf-8"), entry["oracle_test"]
        assert (ROOT / entry["paper_notebook"]).is_file(), entry["paper_notebook"]
    if entry.get("case"):
        assert entry["case"] in {c.name for c in TECHNIQUE_CASES}, entry["case"]


def test_every_technique_module_is_mapped():
    mapped = {name.split(".")[1] for e in papers.load() for name in e["reference"]}
    modules = {m.name for m in pkgutil.iter_modules(reference.__path__)} - INFRASTRUCTURE
    assert modules <= mapped, f"reference modules without a papers/ entry: {sorted(modules - mapped)}"


def test_every_technique_case_is_one_hop_from_its_paper_entry():
    """Issue 25: a case's reference function and fast kernel are both named in its paper's entry, so the map
    reaches each fast form and, through the case, its test."""
    entries = papers.by_key()
    for case in TECHNIQUE_CASES:
        entry = entries[case.paper]
        assert callable(resolve(case.reference)) and callable(resolve(case.optimized)), case.name
        assert case.reference in entry["reference"], f"{case.name}: {case.reference} not in {case.paper}"
        assert case.optimized in entry["optimized"], f"{case.name}: {case.optimized} not in {case.paper}"


def test_every_fast_path_has_a_test_one_hop_away():
    """An entry with a fast path names the test that holds it to the reference: a technique case, or a test of
    the fast class or codec against the reference."""
    untested = [e["key"] for e in papers.load() if e["optimized"] and not (e.get("case") or e.get("optimized_test"))]
    assert not untested, untested


PAPER_ALGORITHMS = ("adafactor", "came", "adabelief", "adopt", "grams", "tam", "orthograd", "cautious", "adamw",
                    "blockwise_8bit", "agr", "spd", "adams_dual_momentum", "allora")  # fmt: skip


def test_every_paper_algorithm_has_an_oracle_entry():
    """Issue 3: each paper's own algorithm is mapped with its oracle, oracle test and notebook."""
    entries = papers.by_key()
    missing = [key for key in PAPER_ALGORITHMS if not entries.get(key, {}).get("oracle_test")]
    assert not missing, missing
