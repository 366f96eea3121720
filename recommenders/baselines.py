"""Reference policies that need no training: uniform random, popularity, oracle greedy."""

from __future__ import annotations

import torch

from simulator.policy import PolicyContext, top_k_items
from simulator.types import Feedback, Observation


def random_subsets(
    n: int, num_items: int, k: int, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """[n, k] uniformly random k-subsets of range(num_items), in random order.

    Floyd's algorithm, vectorized over users: k draws per user whatever the catalog size,
    so a million users need no n x num_items matrix. A fixed number of random numbers is
    drawn per step, so the policy's stream stays aligned across arms.
    """
    out = torch.empty(n, k, dtype=torch.long, device=device)
    for col, j in enumerate(range(num_items - k, num_items)):
        t = (torch.rand(n, generator=gen, device=device) * (j + 1)).long().clamp_max(j)
        taken = (
            (out[:, :col] == t[:, None]).any(dim=1)
            if col
            else torch.zeros(n, dtype=torch.bool, device=device)
        )
        out[:, col] = torch.where(taken, torch.full_like(t, j), t)
    order = torch.rand(n, k, generator=gen, device=device).argsort(dim=1)
    return out.gather(1, order)


class UniformRandom:
    """Shows k distinct items uniformly at random: the natural (non-optimizing) reference."""

    oracle = False

    def __init__(self) -> None:
        self.name = "random"

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    def act(self, obs: Observation) -> torch.Tensor:
        c = self.ctx
        return random_subsets(obs.num_users, c.catalog.size, c.slate_size, c.generator, c.device)

    def update(self, feedback: Feedback) -> None:
        pass


class Popularity:
    """Shows every user the k items with the most clicks so far (all users pooled); ties,
    including the cold start, are broken by a random item order fixed at reset."""

    oracle = False

    def __init__(self) -> None:
        self.name = "popularity"

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        k = ctx.catalog.size
        self.counts = torch.zeros(k, dtype=torch.float64, device=ctx.device)
        perm = torch.randperm(k, generator=ctx.generator, device=ctx.device)
        # tie-break rank in [0, 0.5): never outweighs one click
        self.tiebreak = torch.empty(k, dtype=torch.float64, device=ctx.device)
        self.tiebreak[perm] = torch.arange(k, dtype=torch.float64, device=ctx.device) / (2 * k)

    def act(self, obs: Observation) -> torch.Tensor:
        top = (self.counts + self.tiebreak).topk(self.ctx.slate_size).indices
        return top[None, :].expand(obs.num_users, -1)

    def update(self, feedback: Feedback) -> None:
        clicked = feedback.item[feedback.item >= 0]
        self.counts += torch.bincount(clicked, minlength=self.counts.numel()).to(self.counts.dtype)


class OracleGreedy:
    """ORACLE reference (not deployable): reads the users' true preferences and shows the
    k items of highest click utility ``<u, x> + appeal``, best first.

    Every choice model here gives click probability increasing in each shown item's
    utility, so this maximizes next-step click probability: a bound on one step's
    engagement (not on a horizon's: long-horizon learners can beat it, see
    evans-polarization-v1), and the scoring policy of the simulator benchmark.
    """

    oracle = True

    def __init__(self) -> None:
        self.name = "oracle-greedy"

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    def act(self, obs: Observation) -> torch.Tensor:
        assert obs.true_preferences is not None, "oracle policy run without true preferences"
        c = self.ctx.catalog
        return top_k_items(obs.true_preferences, c.features, self.ctx.slate_size, bias=c.appeal)

    def update(self, feedback: Feedback) -> None:
        pass
