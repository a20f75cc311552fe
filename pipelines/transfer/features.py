"""Frozen features: run a pretrained encoder ONCE per (model, task) and keep the pooled
per-layer features of every train/dev/test item on disk, so every later frozen run (any budget,
seed, rate, single layer, probe) trains only the scalar mix and the head."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipelines.transfer.heads import (
    Encoded,
    Encoder,
    encode_examples,
    family_inputs,
    load_encoder,
    pooled_states,
)
from storage.atomic import atomic_dir, is_complete, write_manifest
from storage.hashing import stable_hash

if TYPE_CHECKING:
    from pipelines.data.task_data import TaskData

SPLITS = ("train", "dev", "test")
FEATURES_FORMAT = "pretrainlab-transfer-features-v1"


def device() -> torch.device:
    """Where transfer runs: the GPU when there is one (same results on CPU, bit for bit)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_identity(model_dir: Path) -> list[list[Any]]:
    """What the saved model is, cheaply: every file's relative path, size and mtime."""
    return [
        [str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    ]


def extract_features(
    encoder: Encoder, encoded: Encoded, batch_size: int, pad_id: int
) -> np.ndarray:
    """(items, G, L, D) pooled features of every layer; the encoder in eval mode, no grad."""
    encoder.eval()
    layers = tuple(range(encoder.n_blocks + 1))
    n = len(encoded.seq_offsets) - 1
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = range(start, min(start + batch_size, n))
            chunks.append(pooled_states(encoder, encoded, batch, layers, pad_id).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def frozen_features(
    family: str, model_dir: Path, task: TaskData, max_len: int, feature_cache: Path | None = None
) -> dict[str, np.ndarray]:
    """The pooled per-layer features of every train/dev/test example of `task`.

    With `feature_cache`, computed once per (model files, task content, family, max_len) and
    read back from `<feature_cache>/<task>-<family>-<key>/<split>.npy` afterwards.
    """
    model_dir = Path(model_dir)
    key = stable_hash(
        {
            "format": FEATURES_FORMAT,
            "family": family,
            "task": task.fingerprint,
            "kind": task.kind,
            "max_len": max_len,
            "model": _model_identity(model_dir),
        }
    )[:16]
    directory = Path(feature_cache) / f"{task.name}-{family}-{key}" if feature_cache else None
    if directory is not None and is_complete(directory):
        return {s: np.load(directory / f"{s}.npy", mmap_mode="r") for s in SPLITS}
    encoder, tokenizer, _ = load_encoder(family, model_dir)
    encoder.to(device())
    inputs = family_inputs(family, tokenizer, max_len, encoder.max_positions)
    arrays = {
        s: extract_features(
            encoder, encode_examples(inputs, task.kind, getattr(task, s)), 32, pad_id(tokenizer)
        )
        for s in SPLITS
    }
    if directory is not None:
        with atomic_dir(directory) as tmp:
            for split, array in arrays.items():
                np.save(tmp / f"{split}.npy", array)
            write_manifest(
                tmp,
                {
                    "format": FEATURES_FORMAT,
                    "family": family,
                    "task": task.name,
                    "model_dir": str(model_dir),
                    "max_len": max_len,
                    "shapes": {s: list(a.shape) for s, a in arrays.items()},
                },
            )
    return arrays


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
