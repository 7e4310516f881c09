"""How well each model classifies the samples its maps explain, beside every result.

A saliency comparison on a model at chance level says little about the methods: their maps then
explain noise. The summary therefore states each model's accuracy on the evaluated samples and
flags a model whose accuracy is not significantly above chance (one-sided exact binomial test
against 1 / number of classes, scipy's `binomtest`, α = 0.05).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

ALPHA = 0.05


def model_accuracy(scores: pd.DataFrame, num_classes: dict[str, int]) -> pd.DataFrame:
    """One row per (dataset, model): evaluated samples, correct ones, accuracy, chance level,
    the binomial p-value of "better than chance" and the at-chance flag."""
    from scipy.stats import binomtest

    columns = ["dataset", "model", "n", "correct", "accuracy", "chance", "p_above_chance", "at_chance"]
    labelled = scores[scores["label"].notna() & scores["correct"].notna()] if "correct" in scores else scores.iloc[:0]
    rows = []
    per_sample = labelled.drop_duplicates(["dataset", "model", "sample_id"])
    for (dataset, model), group in per_sample.groupby(["dataset", "model"], sort=True):
        n = int(len(group))
        correct = int(group["correct"].astype(bool).sum())
        classes = num_classes.get(model)
        chance = 1.0 / classes if classes else float("nan")
        p = binomtest(correct, n, chance, alternative="greater").pvalue if classes and n else float("nan")
        rows.append([dataset, model, n, correct, correct / n if n else float("nan"), chance, p, bool(p >= ALPHA)])
    return pd.DataFrame(rows, columns=columns)


def card_classes(models_dir: str | Path) -> dict[str, int]:
    """Class counts from the model cards under ``results/models``."""
    found = {}
    for card in Path(models_dir).glob("*/card.json"):
        try:
            content = json.loads(card.read_text())
            if content.get("task") == "regression":  # a score, no classes: no chance level
                continue
            found[card.parent.name] = int(content["num_classes"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def accuracy_table(accuracy: pd.DataFrame) -> str:
    lines = [
        "| dataset | model | samples | accuracy | chance | better than chance? |",
        "|---|---|---|---|---|---|",
    ]
    for row in accuracy.itertuples():
        verdict = (
            f"**no — at chance level** (p = {row.p_above_chance:.2g}): its maps explain guesses"
            if row.at_chance
            else f"yes (p = {row.p_above_chance:.2g})"
        )
        if row.chance != row.chance:  # NaN: no class count, e.g. a regression model (rounded score = label)
            verdict = "n/a (no chance level: not a classifier, or no class count)"
        lines.append(
            f"| {row.dataset} | {row.model} | {row.n} | {row.accuracy:.1%} ({row.correct}/{row.n}) | "
            f"{row.chance:.1%} | {verdict} |"
        )
    return "\n".join(lines)
