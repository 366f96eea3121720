"""The Policy protocol: everything that recommends implements it.

A policy is reset once per run with a :class:`PolicyContext` (catalog, slate size, its
own random stream), then alternates ``act(observation) -> slate`` and
``update(feedback)``. The engine builds observations; true preferences are put into them
only for policies whose ``oracle`` attribute is True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .errors import SpecError
from .types import Catalog, Feedback, Observation, check_ids

#: scoring works on blocks of at most this many user x item scores (4 MiB of float32:
#: small enough to be reused by the allocator instead of mapped afresh every block)
SCORE_BLOCK = 1 << 20


@dataclass(frozen=True)
class PolicyContext:
    """What a policy knows when a run starts. The catalog's item facts (features, appeal,
    quality, topic) are public; user preferences are not.

    ``segments`` is coarse side information a platform has about its users ([B, S]
    one-hot, e.g. a declared audience segment): for populations made of user types it is
    the type, otherwise None. ``horizon`` is the number of steps of the run.
    ``user_ids`` are the users' stable string ids at the boundary (default ``str(index)``;
    a file population's ``user_id`` column); inside the engine a user is its index.
    """

    num_users: int
    slate_size: int
    catalog: Catalog
    generator: torch.Generator
    device: torch.device
    horizon: int = 0
    segments: torch.Tensor | None = None
    user_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_ids", check_ids(self.user_ids, self.num_users, "user"))


@runtime_checkable
class Policy(Protocol):
    name: str
    oracle: bool

    def reset(self, ctx: PolicyContext) -> None: ...

    def act(self, obs: Observation) -> torch.Tensor: ...

    def update(self, feedback: Feedback) -> None: ...


def top_k_items(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    block: int = SCORE_BLOCK,
) -> torch.Tensor:
    """[B, k] indices of the k best items for each query by ``<q, x_i> + bias_i``, in
    decreasing order of score.

    Rows are scored in blocks of at most ``block`` scores, so 10^6 users x 10^3 items never
    materializes the full score matrix.
    """
    n, num_items = queries.shape[0], items.shape[0]
    rows = max(1, block // max(1, num_items))
    out = torch.empty(n, k, dtype=torch.long, device=queries.device)
    items_t = items.T.contiguous()
    for start in range(0, n, rows):
        scores = queries[start : start + rows] @ items_t
        if bias is not None:
            scores += bias
        out[start : start + rows] = scores.topk(k, dim=1).indices
    return out


def check_slate(
    slate: torch.Tensor, num_users: int, slate_size: int, num_items: int, name: str
) -> None:
    """Refuse malformed slates with a readable error (shape, dtype, range)."""
    if not isinstance(slate, torch.Tensor) or slate.dtype not in (torch.int64, torch.int32):
        raise SpecError(f"policy {name!r} must return an integer tensor of item indices")
    if tuple(slate.shape) != (num_users, slate_size):
        raise SpecError(
            f"policy {name!r} returned a slate of shape {tuple(slate.shape)}, expected {(num_users, slate_size)}"
        )
    if slate.numel() and (int(slate.min()) < 0 or int(slate.max()) >= num_items):
        raise SpecError(f"policy {name!r} returned item indices outside 0..{num_items - 1}")
