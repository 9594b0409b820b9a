"""The pair-by-pair reference: for every model pair, attack both models on X_AB and cross-evaluate.

This is the definition of SAT written as directly as possible, N(N-1)/2 pairs x 2 attacks, with no sharing of
work. It exists to check the engine (identical records) and as the benchmark's baseline; do not use it for
real runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from satlab.sat.phases import sample_seeds
from satlab.sat.records import Records

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def pairwise_records(
    models: Sequence[nn.Module],
    names: Sequence[str],
    data: Dataset,
    attack: AttackFn,
    seed: int = 0,
    batch_size: int = 128,
) -> Records:
    """Records computed pair by pair: for (A, B), x_A = attack(A) on X_AB, then B(x_A) (and vice versa).

    `attack(model, x, y, seeds)` may be any attack callable (e.g. torchattacks wrapped); the diagonal is each
    model attacked on its own correctly classified images.
    """
    xs, ys, ids = (torch.cat(t) for t in zip(*DataLoader(data, batch_size=batch_size)))
    n = len(models)
    correct = torch.stack([_predict(m, xs, batch_size) == ys for m in models]).numpy()
    fooled = np.zeros((n, n, len(ids)), dtype=bool)
    for a in range(n):
        for b in range(a, n):
            both = np.flatnonzero(correct[a] & correct[b])
            if both.size == 0:
                continue
            x, y = xs[both], ys[both]
            for src, tgt in ((a, b), (b, a)) if a != b else ((a, a),):
                x_adv = torch.cat(
                    [
                        attack(models[src], x[i : i + batch_size], y[i : i + batch_size],
                               sample_seeds(seed, names[src], ids[both][i : i + batch_size]))
                        for i in range(0, len(x), batch_size)
                    ]
                )
                fooled[src, tgt, both] = (_predict(models[tgt], x_adv, batch_size) != y).numpy()
    return Records(list(names), ids.numpy(), ys.numpy(), correct, fooled)
