"""User and item embeddings learned from a log (BPR), for ``recommenders.derive``
(``recaudit scenario derive``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from simulator.errors import SpecError

from .atomic import write_atomic_files
from .training import train_model

#: models whose user and item embeddings a scenario can be derived from (dot-product
#: scores): RecBole's BPR is matrix factorization trained with the BPR loss
EMBEDDING_MODELS = ("BPR",)


@dataclass(frozen=True)
class Embeddings:
    """User and item embeddings learned from a log, keyed by the log's own tokens (row j
    of ``items`` is token ``item_tokens[j]``; no padding row)."""

    item_tokens: list[str]
    items: torch.Tensor  # [K, d] float64
    user_tokens: list[str]
    users: torch.Tensor  # [B, d] float64
    summary: dict[str, Any]


#: interactions up to which training uses RecBole's default batch (2048); above, the
#: batch grows with the log so that an epoch stays about LARGE_LOG_BATCHES batches
LARGE_LOG = 200_000
LARGE_LOG_BATCHES = 128


def train_batch_size(interactions: int) -> int:
    """RecBole's ``train_batch_size`` for a log: 2048 (RecBole's default) up to
    :data:`LARGE_LOG` interactions, then the power of two nearest to interactions /
    :data:`LARGE_LOG_BATCHES` (8192 for a million): per-batch overhead, not arithmetic,
    dominates BPR training in RecBole."""
    if interactions <= LARGE_LOG:
        return 2048
    return max(2048, 1 << round(math.log2(interactions / LARGE_LOG_BATCHES)))


def train_embeddings(
    log: pd.DataFrame,
    *,
    item_genres: pd.Series | None = None,
    model: str = "BPR",
    dim: int = 16,
    epochs: int = 40,
    seed: int = 2020,
    learning_rate: float = 0.005,
    threads: int | None = 1,
    check: Callable[[], None] | None = None,
) -> Embeddings:
    """Train ``model`` on ``log`` (columns ``user``, ``item``, ``timestamp``; item genres
    make every listed item known) with RecBole's pipeline and default 80/10/10 random
    split, ``epochs`` epochs with no early stop, Adam at ``learning_rate``; return the
    learned embeddings with RecBole's test metrics. ``check()`` is called before every
    training batch and raises to stop."""
    if model not in EMBEDDING_MODELS:
        raise SpecError(
            f"cannot derive embeddings with {model!r}; supported: {', '.join(EMBEDDING_MODELS)}"
        )
    with tempfile.TemporaryDirectory(prefix="recaudit-derive-") as tmp:
        write_atomic_files(log, tmp, "derived", item_genres=item_genres)
        tm = train_model(
            model,
            tmp,
            "derived",
            epochs=epochs,
            seed=seed,
            extra_config={
                "embedding_size": dim,
                "learning_rate": learning_rate,
                "stopping_step": epochs,  # no early stop: the epoch count is the recipe
                # validated once, after the last epoch: the final weights are kept anyway,
                # and a full-sort validation of every user after each epoch dominated the
                # time on large logs (the evaluation draws no random numbers, so the
                # weights are the same either way)
                "eval_step": epochs,
                "train_batch_size": train_batch_size(len(log)),
            },
            threads=threads,
            check=check,
        )
    net: Any = tm.model
    return Embeddings(
        item_tokens=tm.item_tokens[1:],
        items=net.item_embedding.weight.detach().double()[1:],
        user_tokens=tm.user_tokens[1:],
        users=net.user_embedding.weight.detach().double()[1:],
        summary={
            "model": model,
            "dim": dim,
            "epochs": epochs,
            "seed": seed,
            "learning_rate": learning_rate,
            "train_batch_size": train_batch_size(len(log)),
            "validation": "once, after the last epoch",
            "split": "RecBole default: random 80/10/10 (train/valid/test)",
            "fit_seconds": round(tm.fit_seconds, 2),
            "test": tm.test_result,
        },
    )
