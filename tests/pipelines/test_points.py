"""Pretraining points in the loop: the WSD schedule, cooldown branches that leave the main run
exactly as it was, and snapshots at the right steps (resumes included)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pipelines.training.loop import train
from pipelines.training.points import PointPlan, read_points, write_point
from pipelines.training.schedule import cooldown_lrs, lr_at, point_steps
from pretrainlab.config import LoopSpec, SpecError, spec_from_dict

TINY_LM = Path(__file__).with_name("tiny_lm.py")
spec_ = importlib.util.spec_from_file_location("tiny_lm_points", TINY_LM)
tiny_lm = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(tiny_lm)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_lm.build_corpus(tmp_path_factory.mktemp("points-corpus"))


def test_wsd_is_warmup_then_flat_then_a_linear_decay():
    loop = LoopSpec(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, schedule="wsd",
                    cooldown=0.2)  # fmt: skip
    assert lr_at(5, loop) == pytest.approx(5e-4)
    assert [lr_at(s, loop) for s in (10, 50, 88)] == pytest.approx([1e-3] * 3)  # stable
    assert lr_at(99, loop) == pytest.approx(1e-3 + (1e-4 - 1e-3) * 11 / 22)  # decay midpoint
    assert lr_at(110, loop) == pytest.approx(1e-4)
    # a point's cooldown: the `cooldown` share of its steps, linear from its rate to the floor
    assert cooldown_lrs(50, loop) == pytest.approx([1e-3 + (1e-4 - 1e-3) * i / 10
                                                    for i in range(1, 11)])  # fmt: skip
    assert cooldown_lrs(50, loop.model_copy(update={"schedule": "cosine"})) == []


def test_point_steps_round_shares_and_leave_the_final_model_out():
    assert point_steps([0.1, 0.3, 1.0], 20) == {2: "0.1", 6: "0.3"}
    assert point_steps([0.1, 0.2, 1.0], 5) == {1: "0.1"}  # both round to epoch 1: once
    assert point_steps([], 100) == {}


def test_points_must_be_ascending_shares(tmp_path):
    base = {"experiment": "x", "store": str(tmp_path), "corpus": {"sources": []}}
    for bad in ([0.0, 0.5], [0.5, 1.5], [0.5, 0.1]):
        with pytest.raises(SpecError, match="points"):
            spec_from_dict({**base, "pretrain": {"points": bad}})


def _run(corpus, tmp_path, name, loop, **kwargs):
    spec = tiny_lm.tiny_gpt_spec(loop)
    net, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
    result = train(net, objective, spec.loop, tmp_path / name, lambda m, s: None, **kwargs)
    return net, result


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_branches_anneal_each_point_and_leave_the_main_run_bit_identical(corpus, tmp_path):
    loop = {"max_steps": 8, "warmup_steps": 1, "eval_every": 4, "checkpoint_every": 4,
            "log_every": 2, "schedule": "wsd", "cooldown": 0.5}  # fmt: skip
    plain, _ = _run(corpus, tmp_path, "plain", loop)
    kept: dict[str, dict] = {}

    def save(model, info):
        kept[info.point] = {"info": info, "weights": _weights(model)}
        write_point(tmp_path / "points", info, lambda out: (out / "w").write_text("x"))

    plan = PointPlan({2: "0.25", 4: "0.5"}, save)
    pointed, result = _run(corpus, tmp_path, "pointed", loop, points=plan)
    final = _weights(pointed)
    assert all(torch.equal(final[k], v) for k, v in _weights(plain).items())  # untouched
    assert [kept[p]["info"].pretrain_step for p in ("0.25", "0.5")] == [2, 4]
    assert [kept[p]["info"].cooldown_steps for p in ("0.25", "0.5")] == [1, 2]
    tokens = [kept[p]["info"].tokens_seen for p in ("0.25", "0.5")]
    assert 0 < tokens[0] < tokens[1] < result.tokens_seen
    # the snapshot is the annealed branch, not the main run's weights at that step
    two, _ = _run(corpus, tmp_path, "two", {**loop, "max_steps": 8}, stop_at_step=2)
    assert not all(torch.equal(kept["0.25"]["weights"][k], v) for k, v in _weights(two).items())
    assert [i.point for i, _ in read_points(tmp_path / "points")] == ["0.25", "0.5"]


def test_a_resumed_run_takes_only_the_points_after_its_checkpoint(corpus, tmp_path):
    loop = {"max_steps": 8, "warmup_steps": 1, "eval_every": 4, "checkpoint_every": 4,
            "log_every": 2, "schedule": "wsd", "cooldown": 0.5}  # fmt: skip
    taken: list[int] = []
    plan = PointPlan({2: "0.25", 6: "0.75"}, lambda model, info: taken.append(info.pretrain_step))
    _run(corpus, tmp_path, "r", loop, points=plan, stop_at_step=4)
    _run(corpus, tmp_path, "r", loop, points=plan)
    assert taken == [2, 6]
