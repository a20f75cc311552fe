"""Pretraining points in the catalog (issue 16): what pretraining is worth, by the amount.

  point_scores       each transfer run's test score on the task's headline metric (at the rate
                     its seed chose on dev), per task x family x point x mode x budget x seed
                     (`labels`: the budget as a number of training examples, "all" too),
                     with the pretraining amount behind it: `tokens_seen`, `flops`,
                     `pretrain_step` (word2vec: epochs). `point` is null for the final model;
                     scratch rows sit at zero pretraining. Baselines, probes and polysemy aside.
  break_even         the report's break-even readings (`pipelines.report.readings.break_even`)
  label_equivalents  the report's label-equivalent readings (`readings.label_equivalent`)

The two readings are computed by the report (they need its paired statistics) and written as
Parquet beside report.md (`<store>/reports/<experiment>/<name>.parquet`); these views read them.
"""

from __future__ import annotations

from storage.catalog_files import View, _read_parquet
from storage.layout import Layout
from storage.scores import chosen_rows

READINGS = ("break_even", "label_equivalents")
FINAL = "final"  # stands in for a null point inside the view (joins on it must match)
CELL = ("task", "family", "point", "mode", "budget")
AMOUNTS = ("tokens_seen", "flops", "pretrain_step")


def _amount(name: str, metric: str) -> str:
    """A point's amount from its version's tags; the final model's from its version's tags or,
    for versions registered before they were tagged, the pretrain run's latest metric."""
    return (
        f"case when c.mode = 'scratch' then 0 else coalesce("
        f"try_cast(c.version_tags['{name}'] as double), a.{metric}) end as {name}"
    )


POINT_SCORES_SQL = f"""
create view point_scores as
with scored as (
    select r.* replace (coalesce(r.point, '{FINAL}') as point),
        t.pretrain_run_id, mv.version as version, mv.tags as version_tags,
        coalesce(try_cast(r.budget as bigint), try_cast(t.tags['train_examples'] as bigint))
            as labels
    from results r
    join runs t on t.run_id = r.run_id
    left join model_versions mv on mv.run_id = t.pretrain_run_id
        and mv.tags['point'] is not distinct from r.point
    where r.family <> 'baseline' and r.mode <> 'probe' and r.task <> 'polysemy'
),
{chosen_rows("scored", CELL)},
amounts as (
    select run_id,
        max(value) filter (where key = 'tokens_seen') as tokens_seen,
        max(value) filter (where key = 'flops') as flops,
        max(value) filter (where key in ('steps', 'epochs')) as steps
    from metrics_latest group by run_id)
select c.run_id, c.task, c.family, nullif(c.point, '{FINAL}') as point, c.mode, c.budget,
    c.labels, c.seed, c.version, c.metric, c.value, c.version_tags['schedule'] as schedule,
    {_amount("tokens_seen", "tokens_seen")},
    {_amount("flops", "flops")},
    {_amount("pretrain_step", "steps")}
from chosen c left join amounts a on a.run_id = c.pretrain_run_id
where c.split = 'test' and c.headline and c.layer is null
"""


def reading_views(layout: Layout) -> list[View]:
    """The report's readings of every experiment, where a report has written them."""
    views = []
    for name in READINGS:
        files = sorted(layout.report("*").parent.glob(f"*/{name}.parquet"))
        if files:
            views.append(View(name, f"select * exclude (_file) from {_read_parquet(files)}",
                              len(files)))  # fmt: skip
    return views
