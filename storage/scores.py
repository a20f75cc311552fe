"""The one definition of a score: what a cell of test results is worth, over seeds.

A cell is whatever the caller groups by (the report: task x model x mode x budget x metric; the
catalog's `version_scores`: registered version x task x mode x budget x metric; the transfer
summary: task x family x version x mode x budget x metric). In every cell:

- each seed counts at the learning rate it chose on dev (best dev score of the whole model on
  the task's headline metric, the rows' `headline` flag):
  a seed is one replicate of the whole protocol, rate choice included, so none is dropped, and a
  rate the seed did not choose never leaks into its test score;
- the score is the test split of the whole model (`layer is null`), or of each layer
  (`per_layer`) for probes;
- the statistic is `n` (rows), `seeds` (distinct seeds), `mean`, `sd` (sample), `min`, `max`.

These are SQL fragments over a relation with the result-row columns (`storage.catalog_files.
RESULT_SCHEMA`), so the catalog's view, the transfer summary and the report share them.
"""

from __future__ import annotations

from collections.abc import Sequence

STATS = (
    "count(*) as n, count(distinct seed) as seeds, avg(value) as mean, "
    "stddev_samp(value) as sd, min(value) as min, max(value) as max"
)


def labelled_tasks(source: str) -> str:
    """`source` with `task` relabelled `task [fingerprint]` (its first 8 characters) when the task
    has rows of several task-data settings (another max_examples, split or file), so cells keyed
    on `task` never pool rows of different data."""
    return f"""select s.* replace (
        case when p.n > 1 then s.task || ' [' || left(coalesce(s.task_fingerprint, '?'), 8) || ']'
             else s.task end as task)
    from {source} s join (
        select task, count(distinct task_fingerprint) as n from {source} group by task
    ) p on p.task = s.task"""


def chosen_rows(source: str, cell: Sequence[str]) -> str:
    """CTEs `dev_best`, `lr_pick` and `chosen` (to follow a `with ...,`): the rows of `source`
    minus those of a learning rate a seed did not choose on dev within its `cell` (metric aside),
    by the dev headline metric. A cell with no dev headline rows keeps all its rows."""
    part = ", ".join(c for c in cell if c != "metric")
    on = " and ".join(f"src.{c} = p.{c}" for c in (*[c for c in cell if c != "metric"], "seed"))
    return f"""dev_best as (
    select {part}, lr, seed, max(value) as best from {source}
    where split = 'dev' and headline and layer is null group by all),
lr_pick as (
    select {part}, seed, arg_max(lr, best) as lr from dev_best group by all),
chosen as (
    select src.* from {source} src left join lr_pick p on {on}
    where p.lr is null or src.lr is not distinct from p.lr)"""


def cell_stats(
    relation: str, cell: Sequence[str], where: str = "true", per_layer: bool = False
) -> str:
    """`select <cell>, n, seeds, mean, sd, min, max from <relation>` over its test rows of the
    whole model (of each layer, grouped by it, when `per_layer`), filtered by `where`."""
    keys = ", ".join([*cell, "layer"] if per_layer else cell)
    layer = "layer is not null" if per_layer else "layer is null"
    return (
        f"select {keys}, {STATS} from {relation} "
        f"where split = 'test' and {layer} and ({where}) group by {keys}"
    )


def score_sql(source: str, cell: Sequence[str], where: str = "true") -> str:
    """The whole query: every cell's statistic over `source` at the rates chosen on dev."""
    return f"with {chosen_rows(source, cell)}\n{cell_stats('chosen', cell, where)}"
