"""pipelines.report on a real store: result rows written as Parquet with
storage.atomic, a real
MLflow (SQLite under tmp) with pretrain runs, a refreshed DuckDB catalog, then the report."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from pipelines.report.document import CONTRADICTED, INCONCLUSIVE, MIXED, NOT_MEASURED, SUPPORTED
from pipelines.report.readings import CONVERGENCE_RULE
from pipelines.report.report import ReportResult, build_report
from pipelines.report.scores import Data, ReportError, open_catalog
from pipelines.report.stats import RULE, Outcome
from pipelines.report.verdicts import judge, seeds_cell
from storage import tracking
from storage.atomic import write_parquet
from storage.catalog import PREDICTION_SCHEMA, RESULT_SCHEMA, refresh
from storage.layout import Layout
from storage.tracking import configure, log_metrics_safe, start_stage_run
from tests.storage.lab_store import make_lab

EXPERIMENT = "lab-pretrain"
BERT_MODEL = "lab-bert"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FAMILIES = {"gpt": "lab-gpt/1", "elmo": "lab-elmo/1", "bert": f"{BERT_MODEL}/1", "word2vec": "w/1"}
ADAPTED = {"gpt+adapt": "lab-gpt/2"}  # gpt adapted on the task's text: finetune only
MODES = ("scratch", "finetune", "frozen", "frozen:layer=0", "frozen:layer=1", "partial:1")
SEEDS = (0, 1, 2)
GOOD_LR, BAD_LR = 1e-3, 1e-4


def final_accuracy(task: str, family: str, mode: str, budget: str, pretrained_wins: bool) -> float:
    """The designed truth: finetune > frozen > single layers; scratch wins or loses at 50."""
    if task == "wic" and family == "word2vec":
        return 0.51
    few = budget == "50"
    table = {
        "finetune": 0.70 if few else 0.80,
        "frozen": 0.65 if few else 0.75,
        "frozen:layer=0": 0.58 if few else 0.70,
        "frozen:layer=1": 0.60 if few else 0.72,
        "partial:1": 0.62 if few else 0.80,
        "scratch": (0.55 if pretrained_wins else 0.75) if few else 0.79,
    }
    return table[mode]


def seed_noise(seed: int, top: float) -> float:
    """A seed's offset, zero on average over SEEDS and scaled by the arm's level: two arms at
    different levels then differ by a little more on one seed than another. Noise shared
    exactly by both arms would make every paired difference identical (zero variance), which
    the statistics rightly read as no evidence at 3 seeds."""
    return 0.01 * (seed - 1) * (1 + top)


def run_rows(task: str, family: str, mode: str, budget: str, seed: int, lr: float, top: float):
    """Dev rows per epoch (finetune fast, scratch slow) and test rows at the best dev epoch."""
    shape = (0.5, 0.7, 0.9, 1.0) if mode == "scratch" else (0.9, 1.0, 1.0, 1.0)
    noise = seed_noise(seed, top)
    dev = [top * s + noise - (0.1 if lr == BAD_LR else 0) for s in shape]
    test = top + noise if lr == GOOD_LR else 0.3  # a wrong lr choice would show as 0.3
    best_epoch = max(range(len(dev)), key=lambda e: (dev[e], -e)) + 1
    common = (
        f"{task}-{family}-{mode}-{budget}-{seed}-{lr}",
        task,
        family,
        FAMILIES.get(family) or ADAPTED[family],
        mode,
        budget,
        seed,
        lr,
    )
    rows = [(*common, e + 1, "dev", "accuracy", v, None) for e, v in enumerate(dev)]
    steps = [(100.0 + seed - 1) * (e + 1) for e in range(len(dev))]  # 100 a seed's interval ±1
    rows += [(*common, e + 1, "dev", "step", v, None) for e, v in enumerate(steps)]
    rows.append((*common, best_epoch, "test", "accuracy", test, None))
    rows.append((*common, best_epoch, "test", "macro_f1", test - 0.05, None))
    return rows


def transfer_rows(pretrained_wins: bool, tasks: tuple[str, ...]) -> list[tuple]:
    rows = []
    for task in tasks:
        for family in FAMILIES:
            for mode in MODES:
                for budget in ("50", "all"):
                    top = final_accuracy(task, family, mode, budget, pretrained_wins)
                    for seed in SEEDS:
                        for lr in (GOOD_LR, BAD_LR):
                            rows += run_rows(task, family, mode, budget, seed, lr, top)
        for budget in ("50", "all"):  # adaptation adds 0.05 over its parent
            top = final_accuracy(task, "gpt", "finetune", budget, pretrained_wins) + 0.05
            for seed in SEEDS:
                for lr in (GOOD_LR, BAD_LR):
                    rows += run_rows(task, "gpt+adapt", "finetune", budget, seed, lr, top)
        for budget, value in (("50", 0.60), ("all", 0.85)):  # finetune@all reads below it
            rows.append(
                (
                    f"base-{task}-{budget}",
                    task,
                    "baseline",
                    None,
                    "tfidf_logreg",
                    budget,
                    0,
                    None,
                    None,
                    "test",
                    "accuracy",
                    value,
                    None,
                )
            )
    return rows


def _probe_metrics(task: str, layer: int, top_layer: int, seed: int) -> dict[str, float]:
    """A probe layer's numbers: tags with a control (selectivity highest at layer 1, where
    the control fits least), WiC with its floor (highest above it at the top)."""
    base = 0.8 if layer == top_layer else 0.6
    accuracy = base + 0.01 * seed + seed_noise(seed, base) / 2
    if task == "wic":
        return {"accuracy": accuracy, "floor": 0.5, "above_floor": accuracy - 0.5,
                "relative_depth": layer / 2}  # fmt: skip
    control = {0: 0.95, 1: 0.5, 2: 0.7}[layer] + 0.01 * seed
    return {"accuracy": accuracy, "seen_accuracy": accuracy, "control_accuracy": control,
            "selectivity": accuracy - control, "relative_depth": layer / 2}  # fmt: skip


def probe_and_polysemy_rows() -> list[tuple]:
    rows = []
    best = {"pos": 1, "wic": 2}  # syntax lower, senses higher
    for task, top_layer in best.items():
        for family in ("elmo", "gpt", "bert"):
            for layer in range(3):
                for seed in SEEDS:
                    for metric, value in _probe_metrics(task, layer, top_layer, seed).items():
                        rows.append(
                            (
                                f"probe-{task}-{family}-{seed}",
                                task,
                                family,
                                FAMILIES[family],
                                "probe",
                                "all",
                                seed,
                                None,
                                None,
                                "test",
                                metric,
                                value,
                                layer,
                            )
                        )
    senses = {"word2vec": [(0, 0.7, 0.7)], "bert": [(0, 0.7, 0.65), (1, 0.8, 0.5), (2, 0.8, 0.4)]}
    for family, layers in senses.items():
        for layer, same, diff in layers:
            for metric, value in (("same_sense_sim", same), ("diff_sense_sim", diff)):
                rows.append(
                    (
                        f"poly-{family}",
                        "polysemy",
                        family,
                        FAMILIES[family],
                        "frozen",
                        "all",
                        0,
                        None,
                        None,
                        "test",
                        metric,
                        value,
                        layer,
                    )
                )
    return rows


ROW = RESULT_SCHEMA.names[:13]  # the columns the tuples above give, in order


def table(rows: list[tuple], fingerprint: str = "fp") -> pa.Table:
    """Rows as the transfer stage writes them: one task fingerprint, accuracy the headline."""
    found = []
    for r in rows:
        row = dict(zip(ROW, r, strict=True))
        headline = row["metric"] == "accuracy" and row["split"] in ("dev", "test")
        found.append({**row, "task_fingerprint": f"{fingerprint}-{row['task']}",
                      "headline": headline, "point": None})  # fmt: skip
    return pa.Table.from_pylist(found, RESULT_SCHEMA)


def write_pretrain_runs(layout: Layout) -> None:
    """A finished pretrain run per family (ELMo learned little), two BERTs for the ablation."""
    configure(layout.default_tracking_uri, layout.mlflow_artifacts)
    runs = [
        ("word2vec", None, None),
        ("elmo", None, None),
        ("gpt", None, None),
        ("bert", 0.8, 1),
        ("bert", 1.0, 2),
    ]
    client = MlflowClient()
    client.create_registered_model(BERT_MODEL)
    for family, mask, version in runs:
        tags = {"stage": "pretrain", "family": family, "corpus_id": "corpA"}
        with start_stage_run(EXPERIMENT, f"pretrain-{family}-{mask}", tags) as run:
            metrics = {"tokens_seen": 1e6, "wall_s": 60.0, "flops": 1e12 * (2 + len(family))}
            if family != "word2vec":
                loss = 6.2 if family == "elmo" else 4.0
                metrics |= {"valid_loss": loss, "unigram_entropy": 6.4, "entropy_gap": 6.4 - loss}
            log_metrics_safe(metrics)
            mlflow.set_tag("learned_little", "true" if family == "elmo" else "false")
            if mask is not None:
                mlflow.log_param("pretrain.bert.mask_replace_prob", mask)
        if version is not None:
            made = client.create_model_version(BERT_MODEL, "file:///m", run_id=run.info.run_id)
            assert int(made.version) == version


@dataclass
class Store:
    path: Path
    uri: str


def make_store(
    root: Path, pretrained_wins: bool, tasks: tuple[str, ...] = ("polarity", "pos", "wic")
) -> Store:
    layout = Layout.at(root)
    layout.store.mkdir(parents=True, exist_ok=True)
    write_parquet(layout.results / "transfer.parquet", table(transfer_rows(pretrained_wins, tasks)))
    write_parquet(layout.results / "probes" / "probes.parquet", table(probe_and_polysemy_rows()))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(tracking, "_configured_artifact_root", None)
        try:
            write_pretrain_runs(layout)
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
    refresh(layout.store, layout.default_tracking_uri)
    return Store(layout.store, layout.default_tracking_uri)


@pytest.fixture(scope="module")
def wins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    yield make_store(tmp_path_factory.mktemp("wins"), pretrained_wins=True)


@pytest.fixture(scope="module")
def report(wins: Store, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    return build_report(wins.path, tmp_path_factory.mktemp("out"))


def claim(result: ReportResult, prefix: str):
    found = [c for c in result.claims if c.name.startswith(prefix)]
    assert len(found) == 1, [c.name for c in result.claims]
    return found[0]


# ------------------------------------------------------------------------------------- tests


def test_files_exist_and_pngs_are_images(report: ReportResult) -> None:
    assert report.markdown_path.is_file() and report.html_path.is_file()
    names = {p.name for p in report.pngs}
    assert {
        "pretraining.png",
        "budget_polarity.png",
        "convergence_polarity.png",
        "probes_pos.png",
        "selectivity_pos.png",
        "partial_k.png",
        "equal_budget.png",
        "polysemy.png",
    } <= names
    for png in report.pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 2000
    md = report.markdown_path.read_text()
    for png in report.pngs:
        assert f"]({png.name})" in md  # referenced relatively
    page = report.html_path.read_text()
    assert page.count("data:image/png;base64,") == len(report.pngs)


def test_one_line_per_claim_with_verdict(report: ReportResult) -> None:
    assert len(report.claims) == 9
    md = report.markdown_path.read_text()
    for c in report.claims:
        assert "\n" not in c.line and "\n" not in c.pilot
        assert f"- **{c.verdict}** — {c.line}" in md
        assert c.verdict in {o.value for o in Outcome} | {NOT_MEASURED}


def test_protocol_block_prints_the_rules_verbatim_on_top(report: ReportResult) -> None:
    md = report.markdown_path.read_text()
    assert md.index("## Protocol") < md.index("## Claims")
    assert RULE.strip() in md and CONVERGENCE_RULE.strip() in md
    assert "How verdicts are reached" in report.html_path.read_text()
    assert "Every mode chose its rate on dev from a grid of 2." in md


def test_unequal_learning_rate_grids_are_flagged(tmp_path: Path) -> None:
    """Scratch searched two rates, finetune one: a reviewer's first objection, said on top."""
    layout = Layout.at(tmp_path / "store")
    for mode, rates in (("scratch", (GOOD_LR, BAD_LR)), ("finetune", (GOOD_LR,))):
        rows = [r for lr in rates for seed in SEEDS
                for r in run_rows("polarity", "gpt", mode, "50", seed, lr, 0.6)]  # fmt: skip
        write_parquet(layout.results / "polarity" / f"{mode}.parquet", table(rows))
    refresh(layout.store, layout.default_tracking_uri)
    md = build_report(layout.store, tmp_path / "out").markdown_path.read_text()
    protocol = md[: md.index("## Claims")]
    assert "**Unequal tuning effort.**" in protocol and "finetune 1, scratch 2" in protocol


def test_few_labels_supported_with_numbers(report: ReportResult) -> None:
    c = claim(report, "Pretrained beats scratch")
    # Every pair but word2vec on WiC (static: 0.51 whatever the mode) is better, paired by
    # seed: seed noise scales with the arm's level, so 0.70 vs 0.55 differs by 0.15 ± 0.0015.
    assert c.verdict == SUPPORTED
    assert "finetune vs scratch at 50 labels): supported" in c.line
    assert "word2vec/wic 0.510 vs 0.510, +0.000 [+0.000, +0.000] no detectable difference" in (
        c.line
    )
    # finetune 0.70 vs scratch 0.55 at 50 labels; the lr chosen on dev, never the bad one.
    assert "gpt/polarity 0.700 vs 0.550, +0.150 [+0.146, +0.154] better" in c.line
    assert "needs 2 seeds" in c.pilot and "this run's seeds can detect it" in c.pilot


def test_few_labels_flipped_is_contradicted(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", pretrained_wins=False, tasks=("polarity",))
    result = build_report(store.path, tmp_path / "out")
    c = claim(result, "Pretrained beats scratch")
    assert c.verdict == CONTRADICTED
    assert "0.700 vs 0.750, -0.050 [-0.051, -0.049] worse" in c.line


def test_other_claims_read_the_designed_data(report: ReportResult) -> None:
    conv = claim(report, "Pretrained converges")
    # steps to 95% of the gain: the 2nd evaluation vs the 4th, at 100 ±1 steps an evaluation
    assert conv.verdict == SUPPORTED
    assert "gpt/polarity@50 200.0 vs 400.0, -200.0 [-205.0, -195.0] fewer steps" in conv.line
    assert claim(report, "Fine-tuning beats frozen").verdict == SUPPORTED  # w2v/wic: no diff
    partial = claim(report, "Loading more pretrained layers")
    assert partial.verdict == SUPPORTED and "k=0 0.550, k=1 0.620" in partial.line
    assert "word2vec/wic@all k=0 0.510, k=1 0.510" in partial.line  # flat: not rising
    assert "word2vec/wic@all k=1 vs k=0 0.510 vs 0.510" in partial.line
    lower = claim(report, "Lower layers")  # selectivity paired by probe seed
    assert lower.verdict == SUPPORTED
    assert "bert/pos selectivity layer 1 vs 2 0.300 vs -0.100, +0.400" in lower.line
    assert "bert/wic above floor layer 2 vs 1 0.310 vs 0.110, +0.200" in lower.line
    w2v = claim(report, "Static word2vec")  # 0.50/0.51/0.52 vs chance: no detectable difference
    assert w2v.verdict == INCONCLUSIVE and "polysemy separation +0.000" in w2v.line
    assert "0.510 vs 0.500" in w2v.line and "no detectable difference" in w2v.line
    mix = claim(report, "Scalar mix")
    assert mix.verdict == SUPPORTED and "mix vs layer 1" in mix.line
    assert claim(report, "BERT's masking").verdict == NOT_MEASURED
    adapted = claim(report, "Domain adaptation")
    assert adapted.verdict == SUPPORTED and "gpt+adapt/polarity@50 0.750 vs 0.700" in adapted.line


def test_cell_table_and_convergence_marks(report: ReportResult) -> None:
    md = report.markdown_path.read_text()
    assert "## 9. Paired comparisons behind the claims" in md
    # claim | cell | seeds | diff | t interval | p (Holm) | verdict | MDE | bootstrap | converged
    row = ("| Pretrained beats scratch when labels are few | gpt/polarity | 3 | +0.150 | "
           "[+0.146, +0.154] | ")  # fmt: skip
    assert row in md
    assert "steps to 95% of gain [95% CI]" in md


def test_sections_show_tables_and_flags(report: ReportResult) -> None:
    md = report.markdown_path.read_text()
    assert "**Learned little** (valid loss near unigram entropy): elmo" in md
    # Score table: seeds 0.683/0.700/0.717 -> mean 0.700, t(2)·sd/√3 = 4.303·0.017/1.732 = 0.042.
    assert "| polarity | gpt | finetune | 50 | 0.700 ±0.042 | 3 | 0.650 ±0.042 |" in md
    assert "below baseline 0.850 (tfidf_logreg)" in md
    assert "| bert | 1 | 0.800 | 0.500 | 0.300 |" in md  # polysemy separation
    assert "Skipped: needs two BERT model versions" in md


def test_masking_ablation_when_two_bert_versions(wins: Store, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(wins.path, copy)
    (copy / "catalog.duckdb").unlink()
    rows = []
    for seed in SEEDS:
        rows += [r for r in run_rows("polarity", "bert", "finetune", "all", seed, GOOD_LR, 0.70)]
    rows = [(*r[:3], f"{BERT_MODEL}/2", *r[4:]) for r in rows]
    write_parquet(Layout.at(copy).results / "ablation.parquet", table(rows))
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    refresh(copy, uri)
    result = build_report(copy, tmp_path / "out")
    c = claim(result, "BERT's masking")
    assert c.verdict == SUPPORTED  # either direction: 1.0 scores lower than 0.8
    assert "polarity/finetune@all mask 1 vs 0.8 0.700 vs 0.800, -0.100" in c.line
    md = result.markdown_path.read_text()
    assert "## 6. Masking ablation" in md and "Skipped: needs two BERT" not in md


def test_empty_store_skips_every_section(tmp_path: Path) -> None:
    store = tmp_path / "empty"
    store.mkdir()
    refresh(store, None)
    result = build_report(store, tmp_path / "out")
    assert result.pngs == []
    assert all(c.verdict == NOT_MEASURED for c in result.claims)
    md = result.markdown_path.read_text()
    assert md.count("Skipped:") == 12  # 8 sections, paired cells, break-even, label-eq., audit
    assert result.html_path.read_text().count("Skipped:") == 12


def test_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no catalog at .*catalog.duckdb: refresh it first"):
        build_report(tmp_path, tmp_path / "out")


def test_each_seed_keeps_the_rate_it_chose_on_dev(tmp_path: Path) -> None:
    """A run records only its best rate; seeds that chose different rates all count."""
    rows = run_rows("polarity", "gpt", "finetune", "50", 0, GOOD_LR, 0.7)
    rows += run_rows("polarity", "gpt", "finetune", "50", 2, BAD_LR, 0.7)
    layout = Layout.at(tmp_path / "store")
    write_parquet(layout.results / "one.parquet", table(rows))
    refresh(layout.store, layout.default_tracking_uri)
    with open_catalog(layout.store) as query:
        stat = Data(query).score("polarity", "gpt", "finetune", "50")
    assert stat is not None and stat.n == 2
    assert stat.mean == pytest.approx((0.7 + seed_noise(0, 0.7) + 0.3) / 2)


def test_report_of_one_experiment_leaves_out_the_others(tmp_path: Path) -> None:
    """The demo and the showcase share a store: each report counts only its own runs."""
    lab = make_lab(tmp_path)
    other = dataclasses.replace(lab, experiment="other", versions={})
    try:
        mine = lab.pretrain("gpt", {}, {"valid_loss": 5.0})
        theirs = other.pretrain("gpt", {}, {"valid_loss": 6.0})
        lab.transfer(mine, "gpt", "polarity", "finetune", [0.7, 0.7])
        other.transfer(theirs, "gpt", "polarity", "finetune", [0.4, 0.4])
        refresh(lab.store, lab.uri)
    finally:
        mlflow.set_tracking_uri(None)
    with open_catalog(lab.store, experiment="lab") as query:
        data = Data(query)
        experiments = {r["experiment"] for r in data.rows("select experiment from runs")}
        assert experiments == {"lab", "lab/transfer/polarity"}
        stat = data.score("polarity", "gpt", "finetune", "all")
    assert stat is not None and stat.n == 2 and stat.mean == pytest.approx(0.7)
    scoped = build_report(lab.store, tmp_path / "lab", experiment="lab").markdown_path.read_text()
    assert "0.700" in scoped and "0.400" not in scoped
    whole = build_report(lab.store, tmp_path / "all").markdown_path.read_text()
    assert "| polarity | gpt | finetune | all | 0.550" in whole  # unscoped: both pooled as one


def test_partial_k_frozen_runs_are_curves_too(tmp_path: Path) -> None:
    """partial:k:frozen rows (loaded layers frozen) draw their own k curve, scratch as k=0; a
    regex that knew only partial:k skipped them, leaving the claim "not measured"."""
    rows = []
    for mode, top in (("scratch", 0.55), ("partial:1:frozen", 0.60), ("partial:2:frozen", 0.65)):
        for seed in SEEDS:
            rows += run_rows("polarity", "gpt", mode, "all", seed, GOOD_LR, top)
    layout = Layout.at(tmp_path / "store")
    write_parquet(layout.results / "frozen.parquet", table(rows))
    refresh(layout.store, layout.default_tracking_uri)
    result = build_report(layout.store, tmp_path / "out")
    c = claim(result, "Loading more pretrained layers")
    assert c.verdict == SUPPORTED
    assert "gpt/polarity@all frozen k=0 0.550, k=1 0.600, k=2 0.650" in c.line
    md = result.markdown_path.read_text()
    assert "partial:k:frozen (the k loaded layers frozen, the rest trained):" in md
    assert "| polarity | gpt | all | k=0: 0.550 ±0.039; k=1: 0.600 ±0.040; k=2: 0.650" in md


# ------------------------------------------------------------------ paired verdicts (issue 15)

ARM_SEEDS = (0, 1, 2, 3, 4)
ITEMS = 200


def arm_rows(task: str, mode: str, scores: dict[int, float]) -> list[tuple]:
    """One run per seed of gpt on `task` at 50 labels, its test score set per seed."""
    rows = []
    for seed, score in scores.items():
        rows += [(*r[:11], score if r[9] == "test" and r[10] == "accuracy" else r[11], r[12])
                 for r in run_rows(task, "gpt", mode, "50", seed, GOOD_LR, 0.6)]  # fmt: skip
    return rows


def arm_predictions(task: str, mode: str, scores: dict[int, float]) -> pa.Table:
    """Per-item correctness matching each run's accuracy (the first round(score·N) correct)."""
    rows = [
        {"run_id": f"{task}-gpt-{mode}-50-{seed}-{GOOD_LR}", "task": task, "family": "gpt",
         "mode": mode, "budget": "50", "seed": seed, "item": i, "gold": "a",
         "pred": "a" if i < round(score * ITEMS) else "b", "correct": i < round(score * ITEMS)}
        for seed, score in scores.items() for i in range(ITEMS)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, PREDICTION_SCHEMA)


def test_known_difference_is_better_and_none_is_no_detectable_difference(tmp_path: Path) -> None:
    """Two constructed pairs of arms in one claim: finetune 0.10 above scratch on polarity
    (seed noise far below it), and level on sst (noise only): the report's cell table says
    *better* and *no detectable difference*, with the bootstrap beside them."""
    base = {0: 0.50, 1: 0.62, 2: 0.55, 3: 0.58, 4: 0.53}
    jitter = {0: 0.01, 1: -0.01, 2: 0.02, 3: -0.02, 4: 0.0}
    arms = {
        ("polarity", "scratch"): base,
        ("polarity", "finetune"): {s: base[s] + 0.10 + jitter[s] for s in ARM_SEEDS},
        ("sst", "scratch"): base,
        ("sst", "finetune"): {s: base[s] + jitter[s] for s in ARM_SEEDS},
    }
    layout = Layout.at(tmp_path / "store")
    for (task, mode), scores in arms.items():
        rows = table(arm_rows(task, mode, scores))
        write_parquet(layout.results / task / f"{mode}.parquet", rows)
        write_parquet(layout.prediction(task, mode), arm_predictions(task, mode, scores))
    refresh(layout.store, layout.default_tracking_uri)
    result = build_report(layout.store, tmp_path / "out")
    c = claim(result, "Pretrained beats scratch")
    assert c.verdict == SUPPORTED
    md = result.markdown_path.read_text()
    rows = {line.split(" | ")[1]: line.split(" | ") for line in md.splitlines()
            if line.startswith("| Pretrained beats scratch")}  # fmt: skip
    better, level = rows["gpt/polarity"], rows["gpt/sst"]
    assert better[2:4] == ["5", "+0.100"] and better[6] == "better"
    assert level[2:4] == ["5", "+0.000"] and level[6] == "no detectable difference"
    assert float(level[5]) > 0.05 and float(level[7]) > 0  # p (Holm), minimum detectable effect
    assert better[8].startswith("[+0.0") and level[8] != "n/a"  # bootstrap, not deciding
    assert "needs" in c.pilot


def test_claim_rule_on_constructed_cells() -> None:
    """supported (all better), inconclusive (all straddling zero), mixed (better and worse)."""
    base = {0: 0.50, 1: 0.62, 2: 0.55, 3: 0.58, 4: 0.53}
    jitter = {0: 0.01, 1: -0.01, 2: 0.02, 3: -0.02, 4: 0.0}

    def cell(label: str, shift: float):
        return seeds_cell(label, {s: base[s] + shift + jitter[s] for s in base}, base)

    assert judge([cell("a", 0.1), cell("b", 0.2)]).outcome == Outcome.SUPPORTED
    level = judge([cell("a", 0.0), cell("b", 0.001)])
    assert level.outcome == Outcome.INCONCLUSIVE
    assert all(c.comparison.low < 0 < c.comparison.high for c in level.cells)
    assert judge([cell("a", 0.1), cell("b", -0.1)]).outcome == Outcome.MIXED == MIXED
    assert judge([cell("a", -0.1)]).outcome == Outcome.CONTRADICTED
    few = judge([seeds_cell("one seed", {0: 0.9}, {0: 0.1})])
    assert few.outcome == Outcome.INCONCLUSIVE
    assert few.verdict.cells["one seed"].verdict.value == "no verdict (fewer than 2 seeds)"


def test_rows_of_two_task_fingerprints_never_pool(tmp_path: Path) -> None:
    """The same task name under two task settings: two cells, never one mean over both."""
    layout = Layout.at(tmp_path / "store")
    for fingerprint, top in (("aaaa", 0.70), ("bbbb", 0.40)):
        rows = []
        for seed in SEEDS:
            rows += run_rows("polarity", "gpt", "finetune", "all", seed, GOOD_LR, top)
        write_parquet(layout.results / f"{fingerprint}.parquet", table(rows, fingerprint))
    refresh(layout.store, layout.default_tracking_uri)
    with open_catalog(layout.store) as query:
        data = Data(query)
        found = {k.task: s for k, s in data.scores.items() if k.metric == "accuracy"}
    assert sorted(found) == ["polarity [aaaa-pol]", "polarity [bbbb-pol]"]
    assert found["polarity [aaaa-pol]"].mean == pytest.approx(0.70)
    assert found["polarity [bbbb-pol]"].mean == pytest.approx(0.40)
    assert all(s.n == 3 for s in found.values())
    md = build_report(layout.store, tmp_path / "out").markdown_path.read_text()
    assert "0.550" not in md


def test_a_retrained_family_shows_which_version_transfer_used(tmp_path: Path) -> None:
    """A family retrained after a code change has two finished pretrain runs; section 1 lists
    both with their versions, and the equal-budget section compares only the transferred one."""
    lab = make_lab(tmp_path)
    try:
        old = lab.pretrain("gpt", {}, {"valid_loss": 6.0, "tokens_seen": 1e6, "flops": 1e12})
        new = lab.pretrain("gpt", {}, {"valid_loss": 5.0, "tokens_seen": 2e6, "flops": 3e12})
        lab.transfer(new, "gpt", "polarity", "finetune", [0.7, 0.7])
        refresh(lab.store, lab.uri)
    finally:
        mlflow.set_tracking_uri(None)
    md = build_report(lab.store, tmp_path / "out", experiment="lab").markdown_path.read_text()
    pretraining = md[md.index("## 1. Pretraining") : md.index("## 2.")]
    assert "| gpt | pretrain-gpt | lab-gpt v1 | no | 6.000 |" in pretraining
    assert "| gpt | pretrain-gpt | lab-gpt v2 | yes | 5.000 |" in pretraining
    equal = md[md.index("## 7.") : md.index("## 8.")]
    assert "tokens seen: 2e+06 to 2e+06" in equal and "1e+06" not in equal
    assert old != new
