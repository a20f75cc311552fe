"""The smallest real specs the flow tests run: real demo text, models a few steps deep."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_loop(steps: int) -> dict[str, int]:
    return {
        "max_steps": steps,
        "batch_size": 4,
        "eval_every": steps // 2,
        "eval_batches": 1,
        "checkpoint_every": steps // 2,
        "log_every": 2,
        "warmup_steps": 1,
    }


def tiny_spec_dict(
    tmp_path: Path, experiment: str, sources: list[dict[str, Any]], steps: int = 6
) -> dict[str, Any]:
    """Every family at the smallest size that still exercises its code paths."""
    loop = tiny_loop(steps)
    return {
        "experiment": experiment,
        "store": str(tmp_path / "store"),
        "corpus": {"sources": sources, "valid_fraction": 0.15},
        "tokenizers": {
            "bert": {"vocab_size": 600},
            "gpt": {"vocab_size": 600},
            "word": {"vocab_size": 3000, "min_count": 2},
        },
        "pretrain": {
            "word2vec": {"vector_size": 16, "epochs": 1, "workers": 1},
            "elmo": {
                "embedding_dim": 16,
                "hidden_dim": 32,
                "seq_len": 16,
                "adaptive_cutoffs": [200],
                "loop": loop,
            },
            "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "loop": loop},
            "bert": {
                "n_layer": 1,
                "n_head": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "max_seq_len": 32,
                "loop": loop,
            },
        },
    }
