"""How the rules are wired, where the wiring itself has a cost at scale."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULE_REFERENCE = re.compile(r"\brules\.\w+\.(?:input|output|log)\b")


def workflow_files() -> list[Path]:
    return [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]


def references_to_rules(text: str) -> list[str]:
    code = (line.split("#", 1)[0] for line in text.splitlines())
    return [match.group(0) for line in code for match in RULE_REFERENCE.finditer(line)]


def test_no_rule_names_another_rules_files():
    # A rule whose inputs name another rule's files (`rules.aggregate.output.scores`) makes
    # Snakemake look each of its inputs up in those dependencies, hashing the rule's whole
    # input list once per input file: the report rule lists every attribution store, so a
    # 25,000-job dry run spent most of its time there (benchmarks/RESULTS.md, planning).
    found = {
        path.name: refs
        for path in workflow_files()
        if (refs := references_to_rules(path.read_text()))
    }
    assert not found, f"name files by path instead of rules.<name>.<files>: {found}"


def test_the_check_finds_a_rule_reference():
    text = "rule report:\n    input:\n        scores=rules.aggregate.output.scores,  # why\n"
    assert references_to_rules(text) == ["rules.aggregate.output"]
    assert references_to_rules("# rules.aggregate.output in a comment\n") == []
