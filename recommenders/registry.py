"""Policy kinds by name, with one line each for ``recaudit policies``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from simulator.errors import SpecError
from simulator.policy import Policy

from .baselines import OracleGreedy, Popularity, UniformRandom


@dataclass(frozen=True)
class PolicyKind:
    name: str
    summary: str
    oracle: bool
    factory: Callable[[], Policy]


POLICIES: dict[str, PolicyKind] = {
    k.name: k
    for k in (
        PolicyKind(
            "random",
            "uniformly random slates: the natural (non-optimizing) reference",
            False,
            UniformRandom,
        ),
        PolicyKind(
            "popularity",
            "the most-clicked items so far, the same slate for everyone",
            False,
            Popularity,
        ),
        PolicyKind(
            "oracle-greedy",
            "ORACLE: top items by true click utility (reads true preferences; an upper bound, not deployable)",
            True,
            OracleGreedy,
        ),
    )
}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name].factory()
    except KeyError:
        close = difflib.get_close_matches(name, POLICIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(
            f"unknown policy {name!r}{hint}; known: {', '.join(sorted(POLICIES))}"
        ) from None
