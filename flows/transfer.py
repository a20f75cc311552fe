"""Transfer flow: every task x family x mode x label budget x seed, baselines and probes."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.transfer import load_task, run_baseline, run_polysemy, run_probe, run_transfer


@flow(name="transfer", flow_run_name="transfer/{spec.experiment}")
def transfer(spec: Spec, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Measure what each pretrained model is worth on each task, in every regime."""
    sweep = spec.transfer
    families = [f for f in (sweep.families or list(models)) if f in models]
    runs: list[dict[str, Any]] = []
    for task_spec in sweep.tasks:
        data = load_task(spec, task_spec)
        runs += run_baseline(spec, data)
        for family in families:
            for mode in sweep.modes:
                if family == "word2vec" and mode.startswith("partial"):
                    continue  # word2vec has no layers to load partially
                runs += run_transfer(spec, data, family, models[family], mode)
        if data.kind == "wic":
            runs += [run_polysemy(spec, data, family, models[family]) for family in families]
        if task_spec.name in sweep.probe_tasks:
            runs += [run_probe(spec, data, family, models[family])
                     for family in families if family != "word2vec"]
    return {
        "runs": len(runs),
        "cache_hit": all(r["cache_hit"] for r in runs),
        "output": f"{len(runs)} result files, {sum(r['rows'] for r in runs)} rows",
    }
