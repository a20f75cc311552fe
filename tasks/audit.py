"""The contamination audit as a stage: one row per task (`storage.catalog_files.AUDIT_SCHEMA`),
cached on the task's content, the corpus, the audit settings and the audit code, logged to
MLflow (experiment `<experiment>/audit`) and read by the catalog's `contamination` view."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

import pipelines.data.contamination as contamination_lib
from pipelines.data.task_data import TaskData
from pretrainlab.config import Spec
from storage import tracking
from storage.atomic import is_complete, write_parquet
from storage.catalog import AUDIT_SCHEMA
from storage.layout import Layout
from tasks.progress import stage_logger
from tasks.stage import cached_output, content_key, store_of
from tasks.tracking import open_tracking


def adapted_on(spec: Spec, task_name: str) -> list[str]:
    """The models `transfer.adapt` continues on this task's text (its test split included)."""
    adapt = spec.transfer.adapt
    if adapt is None or (adapt.tasks is not None and task_name not in adapt.tasks):
        return []
    return [f"{name}+adapt" for name in adapt.families]


def _hit(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    row = pq.read_table(path).to_pylist()[0]
    return {"cache_hit": True, "run_id": row["run_id"], "ngram_share": row["ngram_share"]}


@task(name="audit", task_run_name="audit/{data.name}", cache_policy=NO_CACHE)
def audit_task(spec: Spec, data: TaskData, corpus_id: str) -> dict[str, Any] | None:
    """Share of the task's test examples the pretraining corpus holds (n-gram, verbatim); None
    when the corpus is not ingested (a transfer run on its own, before any pipeline run)."""
    layout = Layout.at(spec.store)
    corpus = layout.corpus(corpus_id)
    if not spec.audit.enabled or not is_complete(corpus):
        stage_logger().info(f"audit of {data.name}: skipped (corpus {corpus_id} not ingested)")
        return None
    settings = contamination_lib.AuditSettings(spec.audit.ngram_words, spec.audit.ngram_chars)
    adapted = adapted_on(spec, data.name)
    key = content_key({"task": data.fingerprint, "corpus": corpus_id, "settings": settings.__dict__,
                       "warn_share": spec.audit.warn_share, "adapted": adapted},
                      [contamination_lib])  # fmt: skip

    def run(path: Path) -> dict[str, Any]:
        started = time.perf_counter()
        found = contamination_lib.audit(data, contamination_lib.corpus_texts(Layout.parts(corpus)),
                                        settings)  # fmt: skip
        return _record(spec, data, corpus_id, found, adapted, path, time.perf_counter() - started)

    return cached_output(store_of(spec), layout.audit(data.name, key), run, _hit)


def _record(spec: Spec, data: TaskData, corpus_id: str, found: contamination_lib.AuditResult,
            adapted: list[str], path: Path, seconds: float) -> dict[str, Any]:
    numbers = {"examples": found.examples, "short_examples": found.short_examples,
               "ngram_examples": len(found.overlapping), "verbatim_examples": len(found.verbatim),
               "ngram_share": found.ngram_share, "verbatim_share": found.verbatim_share,
               "documents": found.documents, "seconds": seconds}  # fmt: skip
    open_tracking(spec)
    tags = {"stage": "audit", "task": data.name, "corpus_id": corpus_id,
            "adapted": ",".join(adapted)}  # fmt: skip
    with tracking.start_stage_run(f"{spec.experiment}/audit", f"audit/{data.name}", tags) as run:
        now = int(time.time() * 1000)
        MlflowClient().log_batch(run.info.run_id,
                                 metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()])
        run_id = run.info.run_id
    del numbers["seconds"]
    row = {"run_id": run_id, "task": data.name, "task_fingerprint": data.fingerprint,
           "corpus_id": corpus_id, **numbers, "ngram_words": spec.audit.ngram_words,
           "ngram_chars": spec.audit.ngram_chars, "warn_share": spec.audit.warn_share,
           "adapted": adapted}  # fmt: skip
    write_parquet(path, pa.Table.from_pylist([row], schema=AUDIT_SCHEMA))
    stage_logger().info(
        f"audit of {data.name}: {found.ngram_share:.1%} of {found.examples} test examples share "
        f"an n-gram with the corpus, {found.verbatim_share:.1%} verbatim ({found.documents} "
        f"documents, {seconds:.1f}s)" + (f"; adapted on its text: {', '.join(adapted)}"
                                          if adapted else "")
    )
    return {"cache_hit": False, "run_id": run_id, "ngram_share": found.ngram_share}
