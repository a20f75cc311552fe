"""The pipeline's optional last step: downstream scores onto the pretrain runs, then `champion`.

Publishing is always cheap (one catalog query, one MLflow batch per changed run) and makes
MLflow's compare view show what each pretrained model is worth; moving the alias happens only
when the spec's `promote.enabled` says so, by the rule the spec states.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.report.promotion import Candidate, Decision, Rule, rank
from pretrainlab.config import PromoteSpec, Spec
from storage import catalog, downstream, registry, versions
from storage.layout import Layout
from tasks.progress import stage_logger
from tasks.tracking import OUTSIDE_WORLD, artifact_key, open_tracking


def rule_from_spec(section: PromoteSpec) -> Rule:
    return Rule(
        mode=section.mode,
        budget=str(section.budget),
        tasks=tuple(section.tasks),
        metric=section.metric,
        aggregate=section.aggregate,
        margin=section.margin,
    )


def _markdown(
    spec: Spec, published: int, decisions: list[Decision], skipped: dict[str, str]
) -> str:
    lines = [f"# Model versions: {spec.experiment}", ""]
    lines.append(f"{published} downstream summary metric(s) logged on pretrain runs.")
    if not decisions:
        lines.append("\nPromotion is off (`promote.enabled: false`).")
    for d in decisions:
        moved = "moved" if d.applied else "unchanged"
        lines += [
            "",
            f"## {d.name}: champion {moved}",
            "",
            d.reason,
            "",
            f"Rule: {d.rule.describe()}",
        ]
        lines += ["", "| version | score |", "|---|---|"]
        lines += [f"| v{n} | {score:.4f} |" for n, score in sorted(d.scores.items())]
    lines += [f"\n## {name}: not ranked\n\n{why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def decide(
    store: Path, name: str, rule: Rule, tracking_uri: str | None = None, refresh: bool = True
) -> Decision:
    """Rank every version of `name` by the rule; say whether `champion` should move and why."""
    tracking_uri = versions.tracking_for(store, tracking_uri)
    if refresh:
        catalog.refresh(store, tracking_uri)
    registered = versions.all_versions(store, tracking_uri)
    # A pretraining point (tag `point`) is a snapshot for break-even curves, never a candidate.
    of_name = [v for v in registered if v.name == name and not v.tags.get("point")]
    if not of_name:
        raise versions.VersionError(
            f"{name}: no such registered model; registered: {versions.known(registered)}"
        )
    table = versions.score_table(store, name, rule.mode, rule.budget, rule.metric, tracking_uri)
    scored_tasks = sorted({task for per_task in table.values() for task in per_task})
    tasks = list(rule.tasks) or scored_tasks
    missing = [t for t in tasks if t not in scored_tasks]
    if missing or not tasks:
        raise versions.VersionError(
            f"{name}: no test scores for task(s) {', '.join(missing) or '(any)'} with mode "
            f"{rule.mode!r}, budget {rule.budget!r}, metric {rule.metric or 'headline'}; scored "
            f"tasks: {', '.join(scored_tasks) or 'none (run the transfer stage)'}"
        )
    candidates = [
        Candidate(v.version, v.tags.get("adapted_on", "one task") if v.tags.get("stage") == "adapt"
                  else None)
        for v in of_name
    ]  # fmt: skip
    champion = versions.current_champion(name, tracking_uri)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return rank(name, rule, tasks, candidates, table, champion, now)


def apply(decision: Decision, tracking_uri: str) -> Decision:
    """Move the alias (when the decision says so) and record why on the version and the model."""
    moved = decision.best if decision.promote and decision.best is not None else None
    record = json.dumps(decision.record(), sort_keys=True)
    versions.record_promotion(decision.name, record, moved, tracking_uri)
    decision.applied = moved is not None
    return decision


def promote(
    store: Path,
    name: str,
    rule: Rule,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    refresh: bool = True,
) -> Decision:
    """Decide by the rule and, unless a dry run, move `champion` and record the reason."""
    tracking_uri = versions.tracking_for(store, tracking_uri)
    decision = decide(store, name, rule, tracking_uri, refresh=refresh)
    return decision if dry_run else apply(decision, tracking_uri)


@task(
    name="promote", task_run_name="promote/{spec.experiment}", cache_policy=NO_CACHE,
    **OUTSIDE_WORLD,
)
def promote_versions(spec: Spec, families: list[str] | None = None) -> dict[str, Any]:
    """Log downstream summaries on each version's run; move `champion` if the spec enables it."""
    open_tracking(spec)
    store, uri = Layout.at(spec.store).store, spec.tracking_uri()
    catalog.refresh(store, uri)
    published = downstream.publish_downstream(store, uri, refresh=False)
    decisions, skipped = [], {}
    if spec.promote.enabled:
        rule = rule_from_spec(spec.promote)
        for family in families or [name for name, _ in spec.pretrain.models()]:
            name = registry.registered_name(spec.experiment, family)
            try:
                decision = promote(store, name, rule, uri, refresh=False)
            except versions.VersionError as error:  # e.g. a family the sweep did not transfer
                stage_logger().warning(f"{name}: not ranked: {error}")
                skipped[name] = str(error)
                continue
            stage_logger().info(f"{name}: {decision.reason}")
            decisions.append(decision)
        if skipped and not decisions:  # the rule matches nothing: a mistake worth failing on
            raise versions.VersionError("; ".join(skipped.values()))
    create_markdown_artifact(
        key=artifact_key(spec.experiment, "promote"),
        markdown=_markdown(spec, published, decisions, skipped),
        description=f"model versions of {spec.experiment}: downstream metrics and champions",
    )
    if decisions:
        create_table_artifact(
            key=artifact_key(spec.experiment, "champions"),
            table=[
                {
                    "model": d.name,
                    "champion": d.best if d.applied else d.champion,
                    "moved": d.applied,
                    "reason": d.reason,
                }
                for d in decisions
            ],
            description="champion alias per registered model after this run",
        )
    return {
        "published_metrics": published,
        "decisions": [{**d.record(), "name": d.name, "applied": d.applied} for d in decisions],
        "skipped": skipped,
        "cache_hit": False,
        "output": f"{published} metric(s) published, {sum(d.applied for d in decisions)} promoted",
    }
