"""Actor-critic network and the Plackett-Luce slate distribution."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _mlp(sizes: list[int], gen: torch.Generator, last_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=last_gain if last else 2**0.5, generator=gen)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Two MLPs on the platform's observation: item logits (actor) and a value (critic).

    Initialized from an explicit generator (orthogonal weights, CleanRL's gains), so the
    same seed builds the same network.
    """

    def __init__(self, obs_dim: int, n_items: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.obs_dim, self.n_items, self.hidden = obs_dim, n_items, hidden
        self.actor = _mlp([obs_dim, hidden, hidden, n_items], gen, last_gain=0.01)
        self.critic = _mlp([obs_dim, hidden, hidden, 1], gen, last_gain=1.0)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)


def sample_slate(logits: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """An ordered slate from the Plackett-Luce distribution of the logits (Gumbel top-k)."""
    u = torch.rand(logits.shape, generator=gen, device=logits.device).clamp(1e-12, 1 - 1e-7)
    return (logits.detach() - torch.log(-torch.log(u))).topk(k, dim=1).indices


def slate_log_prob(logits: torch.Tensor, slate: torch.Tensor) -> torch.Tensor:
    """log P(slate) under Plackett-Luce: items drawn one by one without replacement,

        log P = sum_j [ l_{s_j} - log( sum of exp(l_i) over items not drawn before j ) ].

    One pass over the catalog instead of one masked pass per slot. Each denominator is
    the mass outside the slate plus the slate's items from slot j on: a sum of positive
    terms, so no cancellation even when a few items hold almost all the mass.
    """
    top = logits.max(dim=1, keepdim=True).values.detach()
    e = torch.exp(logits - top)
    picked = e.gather(1, slate)
    outside = e.scatter(1, slate, 0.0).sum(dim=1, keepdim=True)
    from_j = picked.flip(1).cumsum(dim=1).flip(1)
    return (logits.gather(1, slate) - top - (outside + from_j).log()).sum(dim=1)


def first_slot_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the first pick, the exploration bonus."""
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)
