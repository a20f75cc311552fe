"""The champion promotion rule: which registered version deserves `champion`, and why.

Pure: it ranks the scores it is given (version -> task -> test score, mean over seeds, as
`storage.versions.score_table` reads them) and says whether the alias should move; reading the
catalog and writing MLflow happen in `tasks.promote`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Rule:
    """Which version deserves `champion`: the best `aggregate` (mean or worst case) over tasks of
    the test score (mean over seeds) in one transfer mode at one label budget, and only if it
    beats the current champion by more than `margin`."""

    mode: str = "finetune"
    budget: str = "all"
    tasks: tuple[str, ...] = ()
    metric: str | None = None
    aggregate: Literal["mean", "min"] = "mean"
    margin: float = 0.0

    def describe(self) -> str:
        metric = self.metric or "headline metric"
        tasks = ", ".join(self.tasks) or "every scored task"
        return (
            f"{self.aggregate} over tasks ({tasks}) of test {metric}, mode {self.mode}, "
            f"budget {self.budget}; must beat the champion by more than {self.margin:g}"
        )


@dataclass(frozen=True)
class Candidate:
    """A registered version as the rule sees it."""

    version: int
    adapted_on: str | None = None  # tuned on one task's text: not a general model, never ranked


@dataclass
class Decision:
    name: str
    rule: Rule
    tasks: list[str]
    scores: dict[int, float]  # eligible version -> aggregate score
    per_task: dict[int, dict[str, float]]
    ineligible: dict[int, str]  # version -> why it was not ranked
    best: int | None
    champion: int | None  # before the decision
    promote: bool
    reason: str
    decided_at: str
    applied: bool = False

    def record(self) -> dict[str, Any]:
        """What is stored with the alias: the rule, the numbers and the time."""
        return {
            "rule": asdict(self.rule),
            "rule_text": self.rule.describe(),
            "tasks": self.tasks,
            "scores": {str(k): round(v, 6) for k, v in self.scores.items()},
            "best": self.best,
            "previous_champion": self.champion,
            "promoted": self.promote,
            "reason": self.reason,
            "decided_at": self.decided_at,
        }


def aggregate(values: list[float], how: str) -> float:
    return min(values) if how == "min" else sum(values) / len(values)


def _verdict(
    rule: Rule,
    scores: dict[int, float],
    best: int | None,
    champion: int | None,
    ineligible: dict[int, str],
) -> tuple[bool, str]:
    if best is None:
        return False, "no version has test scores for every task under this rule"
    if champion is None:
        return True, f"no champion yet; v{best} scores {scores[best]:.4f}"
    if best == champion:
        return False, f"champion v{champion} is still the best ({scores[best]:.4f})"
    if champion not in scores:
        why = ineligible.get(champion, "it has no scores")
        return True, f"v{best} scores {scores[best]:.4f}; champion v{champion} is unranked ({why})"
    gain = scores[best] - scores[champion]
    if gain > rule.margin:
        return True, (
            f"v{best} scores {scores[best]:.4f}, beating champion v{champion} "
            f"({scores[champion]:.4f}) by {gain:.4f} > margin {rule.margin:g}"
        )
    return False, (
        f"best v{best} ({scores[best]:.4f}) beats champion v{champion} ({scores[champion]:.4f}) "
        f"by {gain:.4f}, not more than the margin {rule.margin:g}"
    )


def rank(
    name: str,
    rule: Rule,
    tasks: list[str],
    candidates: list[Candidate],
    table: dict[int, dict[str, float]],
    champion: int | None,
    decided_at: str,
) -> Decision:
    """Rank every candidate by the rule over `tasks`; say whether `champion` should move."""
    scores, ineligible = {}, {}
    for c in candidates:
        have = table.get(c.version, {})
        lacking = [t for t in tasks if t not in have]
        if c.adapted_on is not None:
            ineligible[c.version] = f"adapted on {c.adapted_on}"
        elif lacking:
            ineligible[c.version] = f"no scores for {', '.join(lacking)}"
        else:
            scores[c.version] = aggregate([have[t] for t in tasks], rule.aggregate)
    # Ties go to the newer version: the same score from fresher code and data.
    best = max(scores, key=lambda n: (scores[n], n)) if scores else None
    promote, reason = _verdict(rule, scores, best, champion, ineligible)
    return Decision(
        name,
        rule,
        tasks,
        scores,
        {n: dict(table.get(n, {})) for n in scores},
        ineligible,
        best,
        champion,
        promote,
        reason,
        decided_at,
    )
