"""A model trained elsewhere as a policy, never retrained: :class:`FrozenRecBolePolicy`
matches it to the catalog's item ids and the population's user ids and states its
cold-start rules; :class:`UploadedModelFactory` builds one per run from an upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from simulator.errors import SpecError
from simulator.policy import SCORE_BLOCK, PolicyContext
from simulator.types import Observation, default_ids

from .fence import _torch_threads
from .policy import RecBolePolicy
from .training import TrainedModel
from .uploads import load_model_bytes


def check_covers_catalog(item_tokens: Sequence[str], item_ids: Sequence[str]) -> None:
    """The model must know every catalog item: simulator item ``i`` is the model's token
    ``item_ids[i]`` (the catalog's id, ``str(i)`` for catalogs without ids of their own)."""
    known = set(item_tokens)
    missing = [x for x in item_ids if x not in known]
    if missing:
        raise SpecError(
            f"the uploaded model does not know {len(missing)} of the scenario's {len(item_ids)} "
            f"catalog items (first missing item ids: {', '.join(map(repr, missing[:5]))})"
        )


def has_own_user_ids(ctx: PolicyContext) -> bool:
    """Whether the run's users carry ids of their own (a population read from data, with
    a user id column) rather than the default ``"0" .. str(n - 1)``."""
    return tuple(ctx.user_ids) != default_ids(ctx.num_users)


#: the cold-start rules, as the report states them
COLD_RULE_GENERAL = (
    "users the model does not know get the model's mean user: the top-k items by the mean "
    "of the model's scores over all its users (one fixed slate)"
)
COLD_RULE_SEQUENTIAL = (
    "users with no clicks yet in the run get the items clicked most so far in the run "
    "(ties in a random order fixed per run)"
)


class FrozenRecBolePolicy(RecBolePolicy):
    """A trained RecBole model as a policy, never retrained.

    - **Items** are matched by id: simulator item ``i`` is the model's item token
      ``ctx.catalog.item_ids[i]``; the model must know every catalog item (SpecError with
      the count and first missing ids otherwise). Items the model knows beyond the
      catalog are never shown.
    - **Users** (general models, BPR): simulated user ``b`` is the model's user
      ``ctx.user_ids[b]`` only when the run's users carry the data's ids
      (:func:`has_own_user_ids`); synthetic users, and users of the data the model never
      saw, are cold: they get the model's mean user (:data:`COLD_RULE_GENERAL`).
      Sequential models score each user's recent clicks in the run; users without
      clicks yet get the most-clicked items (:data:`COLD_RULE_SEQUENTIAL`).

    :meth:`boundary` states the rule and the counts for the report.
    """

    def __init__(self, trained: TrainedModel, *, threads: int | None = 1, name: str = "uploaded"):
        super().__init__(trained.model_name, threads=threads, name=name)
        self.frozen = trained

    def reset(self, ctx: PolicyContext) -> None:
        super().reset(ctx)
        tm = self.frozen
        check_covers_catalog(tm.item_tokens, ctx.catalog.item_ids)
        self.item_map = tm.item_ids(list(ctx.catalog.item_ids))
        self.own_users = has_own_user_ids(ctx)
        if self.own_users:
            self.user_map = tm.user_ids(list(ctx.user_ids))
        else:
            self.user_map = torch.zeros(ctx.num_users, dtype=torch.long)
        self.cold_slate: torch.Tensor | None = None
        if tm.kind == "sequential":
            self.seq_len = tm.max_seq_length
            self.recent = torch.full((ctx.num_users, self.seq_len), -1, dtype=torch.long)
            self.n_recent = torch.zeros(ctx.num_users, dtype=torch.long)
        else:
            with _torch_threads(self.threads):
                self.cold_slate = self._mean_user_slate(tm, ctx.slate_size)
        self.trained = tm

    def _mean_user_slate(self, tm: TrainedModel, k: int) -> torch.Tensor:
        """The top-k catalog items by the mean score over the model's users (for BPR,
        the score of the mean user embedding)."""
        n_users = len(tm.user_tokens)
        total = torch.zeros(len(tm.item_tokens), dtype=torch.float64)
        block = max(1, SCORE_BLOCK // max(1, len(tm.item_tokens)))
        for start in range(1, n_users, block):
            users = torch.arange(start, min(n_users, start + block))
            total += tm.score_users(users).double().sum(dim=0)
        mean = total[self.item_map] / max(1, n_users - 1)
        return (mean + self.tiebreak * 1e-12).topk(k).indices

    def act(self, obs: Observation) -> torch.Tensor:
        if self.cold_slate is None:
            return super().act(obs)
        k, n = self.ctx.slate_size, obs.num_users
        slate = self.cold_slate[None, :].expand(n, k).clone()
        with _torch_threads(self.threads):
            self._model_slates(self.frozen, slate, n, k)
        return slate.to(self.ctx.device)

    def boundary(self) -> dict[str, Any]:
        """How the model met the scenario's ids, for the report."""
        tm, ctx = self.frozen, self.ctx
        catalog = set(ctx.catalog.item_ids)
        outside = sum(1 for t in tm.item_tokens[1:] if t not in catalog)
        out: dict[str, Any] = {
            "kind": f"RecBole {tm.model_name} trained on {tm.dataset_name!r}",
            "catalog_items": ctx.catalog.size,
            "model_items": len(tm.item_tokens) - 1,
            "unknown_items": 0,  # refused at reset otherwise
            "model_items_outside_catalog": outside,
            "model_item_examples": tm.item_tokens[1:6],
            "model_user_examples": tm.user_tokens[1:6],
            "users": ctx.num_users,
            "model_users": len(tm.user_tokens) - 1,
        }
        if tm.kind == "general":
            cold = torch.nonzero(self.user_map == 0).flatten().tolist()
            how = (
                "simulated user b is the model's user with the scenario's user id b"
                if self.own_users
                else "the scenario's users are synthetic (no ids from data), so the model "
                "knows none of them"
            )
            out["rule"] = f"items matched by id; {how}; {COLD_RULE_GENERAL}"
            out["cold_users"] = len(cold)
            out["cold_user_examples"] = [ctx.user_ids[b] for b in cold[:5]]
        else:
            out["rule"] = (
                f"items matched by id; users by their clicks in the run; {COLD_RULE_SEQUENTIAL}"
            )
            never = torch.nonzero(self.n_recent == 0).flatten().tolist()
            out["cold_users"] = len(never)  # never clicked: popularity slates all run
            out["cold_user_examples"] = [ctx.user_ids[b] for b in never[:5]]
        return out

    def _retrain(self) -> None:  # frozen: the uploaded weights are used as they are
        return


def describe_match(
    item_tokens: Sequence[str], user_tokens: Sequence[str], item_ids: Sequence[str]
) -> dict[str, Any]:
    """The counts a submission check states: catalog items the model does not know
    (refused by :func:`check_covers_catalog`), and the model's items outside the
    catalog."""
    known, catalog = set(item_tokens), set(item_ids)
    return {
        "catalog_items": len(item_ids),
        "model_items": len(item_tokens) - 1,
        "unknown_items": sum(1 for x in item_ids if x not in known),
        "model_items_outside_catalog": sum(1 for t in item_tokens[1:] if t not in catalog),
        "model_users": len(user_tokens) - 1,
    }


@dataclass(frozen=True)
class UploadedModelFactory:
    """A picklable zero-argument factory of :class:`FrozenRecBolePolicy` from the
    uploaded files' bytes (it travels to Ray workers; nothing there reads the disk)."""

    config: bytes
    weights: bytes
    name: str = "uploaded"

    def __call__(self) -> FrozenRecBolePolicy:
        return FrozenRecBolePolicy(load_model_bytes(self.config, self.weights), name=self.name)
