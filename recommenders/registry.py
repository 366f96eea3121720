"""Policy kinds by name, with one line each for ``recaudit policies``.

Kinds that need training (the PPO learners) are built from a trained
:class:`~recommenders.rl.policy.PolicyBundle`; the auditor's policy cache supplies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simulator.errors import SpecError, unknown
from simulator.policy import Policy

from .baselines import OracleGreedy, Popularity, UniformRandom
from .myopic import MyopicEstimate
from .recbole import RecBolePolicy
from .rl.policy import LearnedPolicy, PolicyBundle


@dataclass(frozen=True)
class PolicyKind:
    name: str
    summary: str
    oracle: bool = False
    factory: Callable[[], Policy] | None = None  # None: needs training
    gamma: float = 0.99  # learners: default discount
    penalty: str = "none"  # learners: penalty family
    penalty_weight: float = 0.0  # learners: default weight
    #: users are conditionally independent given the policy: it is frozen during an
    #: audit and keeps per-user state only, so one user's clicks never change another
    #: user's slates (the auditor may then analyse users, clustered by replicate).
    #: False for policies that learn from everyone's clicks (popularity, retrained models).
    users_independent: bool = False
    #: the policy retrains a model inside the simulation (RecBole in the loop): each of its
    #: arm-replicates costs seconds of training, so the backend choice spreads them
    retrains: bool = False

    @property
    def trainable(self) -> bool:
        return self.factory is None


_KINDS = (
    PolicyKind(
        "random",
        "uniformly random slates: the natural (non-optimizing) reference",
        factory=UniformRandom,
        users_independent=True,
    ),
    PolicyKind(
        "popularity",
        "the most-clicked items so far, the same slate for everyone",
        factory=Popularity,
    ),
    PolicyKind(
        "myopic",
        "greedy on an online estimate of each user's taste from their clicks (no training)",
        factory=MyopicEstimate,
        users_independent=True,
    ),
    PolicyKind(
        "oracle-greedy",
        "ORACLE: top items by true click utility (reads true preferences; bounds next-step clicks; not deployable)",
        oracle=True,
        factory=OracleGreedy,
        users_independent=True,
    ),
    PolicyKind(
        "recbole-bpr",
        "RecBole BPR retrained on its own click log every 5 steps (the feedback loop)",
        factory=lambda: RecBolePolicy("BPR", retrain_every=5, epochs=10, name="recbole-bpr"),
        retrains=True,
    ),
    PolicyKind(
        "recbole-gru4rec",
        "RecBole GRU4Rec (sequential) retrained on its own click log every 10 steps "
        "(warm-started: after the first training, 2 epochs on the new clicks)",
        factory=lambda: RecBolePolicy(
            "GRU4Rec", retrain_every=10, epochs=2, name="recbole-gru4rec"
        ),
        retrains=True,
    ),
    PolicyKind(
        "recbole-sasrec",
        "RecBole SASRec (sequential) retrained on its own click log every 10 steps "
        "(warm-started: after the first training, 2 epochs on the new clicks)",
        factory=lambda: RecBolePolicy("SASRec", retrain_every=10, epochs=2, name="recbole-sasrec"),
        retrains=True,
    ),
    PolicyKind(
        "ppo",
        "PPO long-horizon click optimizer (discount 0.99); trained",
        gamma=0.99,
        users_independent=True,
    ),
    PolicyKind(
        "ppo-myopic",
        "the same PPO learner with discount 0: maximizes next-step clicks; trained",
        gamma=0.0,
        users_independent=True,
    ),
    PolicyKind(
        "ppo-safe-shift",
        "PPO with the safe-shift reward: + weight x clicks under initial and natural preferences; trained",
        penalty="safe-shift",
        penalty_weight=1.0,
        users_independent=True,
    ),
    PolicyKind(
        "ppo-distance",
        "PPO penalized by weight x distance to the natural counterfactual's preferences; trained",
        penalty="distance",
        penalty_weight=1.0,
        users_independent=True,
    ),
    PolicyKind(
        "ppo-path-specific",
        "PPO rewarded with clicks under natural-counterfactual preferences (weight 1: fully); trained",
        penalty="path-specific",
        penalty_weight=1.0,
        users_independent=True,
    ),
)
POLICIES: dict[str, PolicyKind] = {k.name: k for k in _KINDS}


def get_kind(name: str) -> PolicyKind:
    try:
        return POLICIES[name]
    except KeyError:
        raise unknown("policy", name, POLICIES) from None


def make_policy(name: str, bundle: PolicyBundle | None = None) -> Policy:
    """A fresh policy instance; trained kinds need their bundle."""
    kind = get_kind(name)
    if kind.factory is not None:
        return kind.factory()
    if bundle is None:
        raise SpecError(
            f"policy {name!r} must be trained first: recaudit train --policy {name} --scenario ..."
        )
    return LearnedPolicy(bundle)
