"""What a training batch is and which examples of it one process computes.

Shared by the model families (which build batches) and the training loop (which consumes
them), so it lives below both: a batch is a pure function of (seed, step, example index),
which is what makes resume exact and 1 process equal N.
"""

from __future__ import annotations

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys, e.g. (seed, step, example_index)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
    generator = torch.Generator()
    generator.manual_seed(int(state[0] >> np.uint64(1)))
    return generator


def micro_examples(batch_size: int, micro: int, n_micro: int, rank: int, world: int) -> range:
    """Indexes (within the step's global batch) of the examples in one rank's micro-batch.

    Every (micro, rank) pair gets a disjoint slice and together they cover range(batch_size),
    so a batch built per example index is the same global batch in 1 process or N.
    """
    per_micro = batch_size // (n_micro * world)
    start = (micro * world + rank) * per_micro
    return range(start, start + per_micro)
