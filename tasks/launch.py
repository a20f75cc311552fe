"""Pretraining under torchrun: the command the spec's `pretrain.launch` describes, and the entry
point every rank runs (`python -m tasks.launch JOB.json`).

The Prefect task (node 0) opens the MLflow run, writes the job file into the model's work
directory, runs torchrun as a subprocess and streams its output into the run's log. Every rank
trains with the shared loop (DDP); only rank 0 logs metrics to that MLflow run, writes
checkpoints (into the shared work directory) and saves the model. Back in the task, the model is
logged and registered exactly as after an in-process run. word2vec is gensim, not torch: it
always trains in-process.

torch, mlflow and the training code are imported where they are used: `check_launch` runs in
every run's pre-flight, which must not pay for them when nothing trains under torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrainlab.config import TORCH_FAMILIES, LaunchSpec, PretrainlabError, Spec, spec_from_dict
from storage.atomic import write_json

if TYPE_CHECKING:
    from pipelines.training.pretraining import PretrainJob

JOB_FILE = "launch.json"
SUMMARY_FILE = "launch-summary.json"
SHOWN = ("loss", "valid_loss", "tokens_per_s")
ROOT = Path(__file__).resolve().parents[1]  # the directory that holds tasks/, pipelines/, ...


class LaunchError(PretrainlabError, RuntimeError):
    """A torchrun launch that cannot work as specified, or that failed; says what to change."""


def uses_torchrun(spec: Spec, family: str) -> bool:
    return family in TORCH_FAMILIES and spec.pretrain.launch.world_size > 1


def backend(launch: LaunchSpec) -> str:
    if launch.backend != "auto":
        return launch.backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def check_launch(spec: Spec) -> None:
    """Fail fast, before any training, when the world size cannot work on this machine."""
    launch = spec.pretrain.launch
    families = [f for f in spec.pretrain.families if uses_torchrun(spec, f)]
    if not families:
        return
    chosen = backend(launch)
    if chosen == "nccl":
        import torch

        gpus = torch.cuda.device_count()
        if gpus < launch.nproc_per_node:
            raise LaunchError(
                f"pretrain.launch: nproc_per_node={launch.nproc_per_node} with backend nccl "
                f"needs {launch.nproc_per_node} GPUs on this node, found {gpus}; set "
                f"nproc_per_node to at most {gpus}, or backend: gloo to train on CPU"
            )
    for family in families:
        loop = getattr(spec.pretrain, family).loop
        if chosen == "nccl" and loop.device == "cpu":
            raise LaunchError(
                f"pretrain.{family}.loop.device is cpu but pretrain.launch.backend is nccl "
                "(GPUs only); use backend: gloo or device: auto"
            )
        if loop.batch_size % (loop.grad_accum * launch.world_size):
            raise LaunchError(
                f"pretrain.{family}.loop.batch_size {loop.batch_size} must be divisible by "
                f"grad_accum {loop.grad_accum} x world size {launch.world_size} "
                f"(nproc_per_node {launch.nproc_per_node} x nnodes {launch.nnodes})"
            )


def torchrun_command(launch: LaunchSpec, job_file: Path, node_rank: int | str = 0) -> list[str]:
    """The torchrun command line for one node (node 0 is the one pretrainlab runs on)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={launch.nproc_per_node}",
        f"--nnodes={launch.nnodes}",
        f"--node_rank={node_rank}",
        f"--master_addr={launch.master_addr}",
        f"--master_port={launch.master_port}",
        "-m",
        "tasks.launch",
        str(job_file),
    ]


def _forward_sigterm(process: subprocess.Popen) -> Any:
    """A cancel (SIGTERM) reaches torchrun, which passes it to every rank: they checkpoint and
    stop as an in-process run would. Signal handlers exist only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))


def run_torchrun(
    spec: Spec, job: PretrainJob, run_id: str, tracking_uri: str
) -> dict[str, Any]:
    """Train `job` on every rank under torchrun; return rank 0's summary (as in-process)."""
    launch = spec.pretrain.launch
    job_file = job.work_dir / JOB_FILE
    summary_file = job.work_dir / SUMMARY_FILE
    summary_file.unlink(missing_ok=True)
    write_json(
        job_file,
        {
            "spec": spec.model_dump(mode="json"),
            "family": job.family,
            "tokens_dir": str(job.tokens_dir),
            "tokenizer_dir": str(job.tokenizer_dir),
            "work_dir": str(job.work_dir),
            "out_dir": str(job.out_dir),
            "budget_tokens": job.budget_tokens,
            "budget_minutes": job.budget_minutes,
            "points": list(job.points),
            "points_dir": None if job.points_dir is None else str(job.points_dir),
            "backend": backend(launch),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
        },
    )
    from tasks.progress import stage_logger  # here: ranks need not import Prefect

    command = torchrun_command(launch, job_file)
    logger = stage_logger()
    logger.info(f"{job.family}: torchrun, world size {launch.world_size}: {' '.join(command)}")
    if launch.nnodes > 1:
        other = " ".join(torchrun_command(launch, job_file, node_rank="<i>"))
        logger.info(f"on nodes 1..{launch.nnodes - 1}, run (store at the same path): {other}")
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    started, tail = time.monotonic(), deque(maxlen=30)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        previous = _forward_sigterm(process)
        try:
            for line in process.stdout:
                tail.append(line.rstrip())
                logger.info(line.rstrip())
        finally:
            process.wait()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    if summary_file.exists():  # rank 0 finished (or checkpointed on a cancel)
        return json.loads(summary_file.read_text())
    raise LaunchError(
        f"{job.family}: torchrun exited with code {process.returncode} after "
        f"{time.monotonic() - started:.0f}s and no summary; last output:\n" + "\n".join(tail)
    )


# ------------------------------------------------------------------------ the per-rank side


def _join_group(chosen: str) -> tuple[int, int]:
    """Join the group torchrun describes; under nccl (or gloo on GPUs) one device per rank."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(chosen)
    return dist.get_rank(), dist.get_world_size()


def _rank0_logger(job: dict[str, Any], planned: int):
    """Metrics straight into the task's MLflow run (never reopened here); a line to stdout."""
    import mlflow

    from storage import tracking

    mlflow.set_tracking_uri(job["tracking_uri"])

    def log(metrics: dict[str, float], step: int) -> None:
        tracking.log_metrics_safe(metrics, step=step, run_id=job["run_id"])
        shown = ", ".join(f"{k} {v:,.4g}" for k, v in metrics.items() if k in SHOWN)
        if shown:
            print(f"{job['family']} step {step}/{planned}: {shown}", flush=True)

    return log


def main(job_file: str) -> None:
    """One rank: train with the shared loop; rank 0 logs, checkpoints and saves the model."""
    import torch.distributed as dist

    import pipelines.training.pretraining as pretraining

    job = json.loads(Path(job_file).read_text())
    spec = spec_from_dict(job["spec"], job_file)
    rank, world = _join_group(job["backend"])
    work = Path(job["work_dir"])
    # Every rank builds the model the same way; only rank 0's copy is kept.
    out = Path(job["out_dir"]) if rank == 0 else work / f"rank-{rank}-scratch"
    pretrain_job = pretraining.PretrainJob(
        job["family"],
        Path(job["tokens_dir"]),
        Path(job["tokenizer_dir"]),
        work,
        out,
        job["budget_tokens"],
        job["budget_minutes"],
        tuple(job.get("points") or ()),
        Path(job["points_dir"]) if job.get("points_dir") else None,
    )
    planned = getattr(spec.pretrain, job["family"]).loop.max_steps
    log = _rank0_logger(job, planned) if rank == 0 else (lambda metrics, step: None)
    try:
        summary = pretraining.pretrain(spec, pretrain_job, log)
        if rank == 0:
            write_json(work / SUMMARY_FILE, {**summary, "world_size": world})
        dist.barrier()
    finally:
        if rank != 0:
            shutil.rmtree(out, ignore_errors=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
