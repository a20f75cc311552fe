"""Pretraining under torchrun from the spec: 2 gloo ranks on CPU, through the real pipeline."""

from __future__ import annotations

import socket
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import pipelines.models.saved as saved
import pipelines.training.pretraining as pretraining
from flows.pipeline import pipeline
from pretrainlab.config import Spec, SpecError, spec_from_dict
from storage import registry
from storage.layout import Layout
from tasks.launch import LaunchError, check_launch, torchrun_command
from tasks.pretrain import pretrain_family
from tests.flows.tiny_specs import tiny_spec_dict


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpt_spec(tmp_path: Path, **launch: object) -> Spec:
    data = tiny_spec_dict(tmp_path, "ddptest", [{"dataset": "lee-news", "limit": 120}])
    data["pretrain"]["families"] = ["gpt"]
    data["pretrain"]["gpt"]["dropout"] = 0.0  # so 2 ranks can match 1 process to float noise
    # fp32: under bf16 autocast 2 ranks' reductions round differently from 1 process's, and the
    # gap after 6 Adam steps depends on the CPU's bf16 kernels (AMX or AVX-512), not on DDP.
    data.setdefault("compute", {})["cpu_autocast"] = "off"
    data["pretrain"]["launch"] = launch
    return spec_from_dict(data)


@pytest.mark.usefixtures("prefect_harness")
def test_two_gloo_ranks_train_register_and_log_once(tmp_path: Path) -> None:
    spec = gpt_spec(tmp_path, nproc_per_node=2, backend="gloo", master_port=free_port())
    results = pipeline(spec, until="pretrain")
    model = results["pretrain"]["families"]["gpt"]
    assert model["version"] == "1" and not model["cache_hit"]
    assert model["summary"]["world_size"] == 2 and model["summary"]["steps"] == 6

    mlflow.set_tracking_uri(spec.tracking_uri())
    client = MlflowClient()
    experiment = client.get_experiment_by_name("ddptest")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'pretrain'")
    assert [r.info.run_id for r in runs] == [model["run_id"]]  # one run, not one per rank
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["world_size"] == 2
    # Rank 0 alone logs: one loss value per logged step (two ranks would log each step twice).
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]

    # The registered version loads and runs; only rank 0's model and checkpoint exist.
    version = client.get_model_version_by_alias("ddptest-gpt", "candidate")
    assert version.run_id == run.info.run_id
    gpt, tokenizer = saved.load_pretrained(
        "gpt", registry.download(registry.resolve("models:/ddptest-gpt@candidate"))
    )
    ids = torch.tensor([tokenizer("Pretraining helps.")["input_ids"]])
    assert gpt(ids).logits.shape[-1] == len(tokenizer)
    work = Path(model["model_dir"]).parent / "work"
    assert (work / "checkpoints").exists()
    assert not list(work.glob("rank-*-scratch"))

    # The same spec in one process, on the same shards, reaches the same weights.
    shards = results["tokenize"]["families"]["gpt"]
    single = tmp_path / "single"
    job = pretraining.PretrainJob(
        "gpt",
        Path(shards["tokens"]),
        Layout.at(spec.store).tokenizer(shards["tokenizer_id"]),
        single / "work",
        single / "model",
    )
    pretraining.pretrain(spec, job, lambda metrics, step: None)
    one, _ = saved.load_pretrained("gpt", single / "model")
    two, _ = saved.load_pretrained("gpt", model["model_dir"])
    for name, value in one.state_dict().items():
        assert torch.allclose(value, two.state_dict()[name], atol=1e-5, rtol=0), name


def test_nccl_without_enough_gpus_fails_fast_naming_the_counts(tmp_path: Path) -> None:
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs: nccl with 2 ranks is valid here")
    spec = gpt_spec(tmp_path, nproc_per_node=2, backend="nccl")
    with pytest.raises(LaunchError) as error:
        pretrain_family.fn(spec, "gpt", "corpus", "tokenizer", str(tmp_path / "tokens"))
    message = str(error.value)
    assert "nproc_per_node=2" in message and "needs 2 GPUs" in message
    assert f"found {torch.cuda.device_count()}" in message and "gloo" in message
    assert not (tmp_path / "store").exists()  # nothing started


def test_world_size_must_divide_the_batch(tmp_path: Path) -> None:
    spec = gpt_spec(tmp_path, nproc_per_node=3, backend="gloo")  # batch 4
    with pytest.raises(LaunchError, match=r"batch_size 4 must be divisible .* world size 3"):
        check_launch(spec)
    check_launch(gpt_spec(tmp_path, nproc_per_node=2, backend="gloo"))


def test_several_nodes_need_a_reachable_master(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="master_addr"):
        gpt_spec(tmp_path, nproc_per_node=2, nnodes=2)
    spec = gpt_spec(tmp_path, nproc_per_node=8, nnodes=4, master_addr="10.0.0.1", backend="nccl")
    command = torchrun_command(spec.pretrain.launch, Path("/shared/launch.json"), node_rank=3)
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=8",
        "--nnodes=4",
        "--node_rank=3",
        "--master_addr=10.0.0.1",
        "--master_port=29500",
        "-m",
        "tasks.launch",
        "/shared/launch.json",
    ]
