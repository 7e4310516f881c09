"""Code fingerprints: what a job's result depends on (symbols reached through the AST), how it
is written never (docstrings, comments, formatting), and planning modules never."""

from __future__ import annotations

import ast
import os

import pytest

from attrflow.catalog import PACKAGE_DIR
from attrflow.fingerprint import (
    NON_COMPUTE_MODULES,
    code_fingerprint,
    normalised_dump,
    registered_symbol,
    registered_symbols,
    symbol_closure,
    symbols_fingerprint,
)
from attrflow.plan import ATTRIBUTE_JOB, SCORE_METRIC_JOB, Plan


def _closure_modules(roots):
    return {module for module, _ in symbol_closure(roots)}


def test_formatting_docstrings_and_comments_do_not_count():
    a = 'def f(x, y=2):\n    """Doc."""\n    # why\n    return x + y\n'
    b = "def f(x,\n      y=2):\n    return (x + y)  # other comment\n"
    c = "def f(x, y=3):\n    return x + y\n"
    dump = lambda src: normalised_dump(ast.parse(src).body[0])  # noqa: E731
    assert dump(a) == dump(b)
    assert dump(a) != dump(c)


def test_closure_follows_the_symbols_a_method_uses():
    closure = symbol_closure([registered_symbol("methods", "integrated_gradients")])
    assert ("attrflow.methods._batching", "path_diagnostics") in closure
    assert not any(module == "attrflow.methods.random_attribution" for module, _ in closure)


def test_a_shared_module_counts_only_through_what_is_used():
    # Guided Backprop's module imports Expected Gradients' module for one helper: editing the
    # rest of Expected Gradients must not reach it.
    closure = symbol_closure([registered_symbol("methods", "guided_backprop")])
    eg = {name for module, name in closure if module == "attrflow.methods.expected_gradients"}
    assert "expected_gradients" not in eg


def test_planning_and_registry_modules_belong_to_no_fingerprint():
    for family, fn in [("methods", "integrated_gradients"), ("methods", "uni"), ("metrics", "deletion")]:
        root = ATTRIBUTE_JOB if family == "methods" else SCORE_METRIC_JOB
        modules = _closure_modules([root, registered_symbol(family, fn)])
        assert not modules & NON_COMPUTE_MODULES, (fn, modules & NON_COMPUTE_MODULES)
        assert "attrflow.jobs.attribute" in modules or family == "metrics"


def test_a_registry_lookup_by_constant_name_is_followed():
    # mard_ig runs integrated_gradients through get_method(IG_FN)
    closure = symbol_closure([registered_symbol("metrics", "mard_ig")])
    assert ("attrflow.methods.integrated_gradients", "integrated_gradients") in closure


def test_a_method_named_in_an_entry_counts():
    base = {
        "run": {"datasets": [], "models": [], "methods": [], "metrics": []},
        "methods": {
            "sg_grad": {"fn": "smoothgrad", "of": "gradient"},
            "sg_ixg": {"fn": "smoothgrad", "of": "input_x_gradient"},
        },
    }
    plan = Plan(base)
    assert plan.method_fingerprint("sg_grad") != plan.method_fingerprint("sg_ixg")


def test_touching_a_file_changes_nothing():
    path = PACKAGE_DIR / "methods" / "random_attribution.py"
    before = code_fingerprint(path)
    os.utime(path)  # a fresh clone or a touch must not look like a code change
    assert code_fingerprint(path) == before
    assert symbols_fingerprint([registered_symbol("methods", "gradient")]) != symbols_fingerprint(
        [registered_symbol("methods", "random_attribution")]
    )


def test_parameter_declarations_do_not_count_but_defaults_do():
    # bounds and descriptions are checked when the config is validated; they compute nothing
    a = 'def f(x, *, steps: Annotated[int, Ge(1), Doc("old words")] = 3) -> int:\n    return x * steps\n'
    b = "def f(x, *, steps: int = 3):\n    return x * steps\n"
    c = "def f(x, *, steps: int = 4):\n    return x * steps\n"
    dump = lambda src: normalised_dump(ast.parse(src).body[0])  # noqa: E731
    assert dump(a) == dump(b) != dump(c)


def test_family_variants_share_their_function_and_differ_by_their_constants():
    kpm, knm = registered_symbols("metrics", "kpm"), registered_symbols("metrics", "knm")
    assert kpm[0] == knm[0] == ("attrflow.metrics.keep_remove_mask", "keep_remove_curve")
    assert symbols_fingerprint(kpm) != symbols_fingerprint(knm)
    assert ("attrflow.metrics.keep_remove_mask", "keep_remove_curve") in symbol_closure(kpm)
    # a function registered once has no constants to add
    assert registered_symbols("methods", "gradient") == [registered_symbol("methods", "gradient")]
    from attrflow.plan import _metric_code_cached  # what the plan gives each score job

    assert _metric_code_cached("deletion") != _metric_code_cached("insertion")


def test_every_job_root_names_a_function_that_exists():
    # A root naming nothing fingerprints nothing: the job would never re-run on a code change.
    import attrflow.plan as plan

    roots = {name: value for name, value in vars(plan).items() if name.endswith("_JOB")}
    assert roots, "attrflow.plan defines the jobs' fingerprint roots as *_JOB constants"
    for name, (module, function) in roots.items():
        closure = symbol_closure([(module, function)])
        assert (module, function) in closure, f"{name} = {(module, function)} is not defined"


def test_moved_model_code_is_followed_to_the_module_that_defines_it():
    # models/ is split by job: preparing a model reaches training, the hub, the card format and
    # checkpoint reading; loading one (every attribution job) reaches the architecture factory.
    from attrflow.plan import PREPARE_MODEL_JOB

    prepared = _closure_modules([PREPARE_MODEL_JOB])
    for module in ("preparation", "training", "hub", "cards", "checkpoints", "architectures", "normalisation"):
        assert f"attrflow.models.{module}" in prepared
    attributed = symbol_closure([ATTRIBUTE_JOB])
    assert ("attrflow.models.cards", "load_model") in attributed
    assert ("attrflow.models.architectures", "build_architecture") in attributed
    assert not any(module == "attrflow.models.hub" for module, _ in attributed)  # loading never trains or downloads


def test_a_name_re_exported_by_a_module_is_followed_to_its_definition():
    # deletion imports pixel_positions from metrics._removal, which re-exports metrics.ranking's.
    closure = symbol_closure([registered_symbol("metrics", "deletion")])
    assert ("attrflow.metrics.ranking", "pixel_positions") in closure


# ------------------------------------------------------------------------------ memo between runs
IG_ROOTS = [ATTRIBUTE_JOB, registered_symbol("methods", "integrated_gradients")]


@pytest.fixture()
def memo_in(tmp_path):
    from attrflow.fingerprint import remember_fingerprints_in

    remember_fingerprints_in(tmp_path / "attrflow")
    yield tmp_path / "attrflow" / "code-fingerprints.json"
    remember_fingerprints_in(None)


def test_the_memo_gives_what_computing_afresh_gives_and_spares_the_work(memo_in, monkeypatch):
    import attrflow.fingerprint as fingerprint

    fingerprint.remember_fingerprints_in(None)
    fresh = symbols_fingerprint(IG_ROOTS)
    fingerprint.remember_fingerprints_in(memo_in.parent)
    assert symbols_fingerprint(IG_ROOTS) == fresh  # computed, then written
    assert fresh in memo_in.read_text()
    fingerprint.remember_fingerprints_in(memo_in.parent)  # a new planning run reads the file

    def no_closure(roots):
        raise AssertionError("the memo should have answered")

    monkeypatch.setattr(fingerprint, "symbol_closure", no_closure)
    assert symbols_fingerprint(IG_ROOTS) == fresh


@pytest.mark.parametrize("stored", ["other package", None])
def test_a_memo_of_other_package_content_or_unreadable_is_not_used(memo_in, stored):
    import json

    import attrflow.fingerprint as fingerprint

    fingerprint.remember_fingerprints_in(None)
    fresh = symbols_fingerprint(IG_ROOTS)
    key = json.dumps(sorted([list(root) for root in IG_ROOTS]))
    memo_in.parent.mkdir(parents=True)
    memo_in.write_text("{not json" if stored is None else json.dumps({"package": stored, "fingerprints": {key: "stale"}}))
    fingerprint.remember_fingerprints_in(memo_in.parent)
    assert symbols_fingerprint(IG_ROOTS) == fresh
    assert json.loads(memo_in.read_text())["fingerprints"] == {key: fresh}  # written anew


def test_the_package_digest_follows_content_not_mtimes(tmp_path, monkeypatch):
    import shutil

    import attrflow.fingerprint as fingerprint

    copy = tmp_path / "attrflow"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", copy)
    before = fingerprint.package_digest()
    helper = copy / "methods" / "_batching.py"
    os.utime(helper, (1, 1))
    assert fingerprint.package_digest() == before
    helper.write_text(helper.read_text() + "\n# one more line\n")
    assert fingerprint.package_digest() != before
