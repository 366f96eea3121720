"""The baseline policies and the chunked scorer."""

from __future__ import annotations

import torch

from recommenders.baselines import OracleGreedy, Popularity, random_subsets
from recommenders.registry import POLICIES, make_policy
from simulator.policy import PolicyContext, top_k_items
from simulator.types import Catalog, Feedback, Observation


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_subsets_are_distinct_and_uniform():
    n, items, k = 20000, 12, 4
    s = random_subsets(n, items, k, _gen(), torch.device("cpu"))
    assert s.shape == (n, k)
    assert ((s >= 0) & (s < items)).all()
    srt = s.sort(dim=1).values
    assert (srt[:, 1:] != srt[:, :-1]).all()  # no repeats within a slate
    freq = torch.bincount(s.flatten(), minlength=items).double() / (n * k)
    assert torch.allclose(freq, torch.full((items,), 1 / items, dtype=torch.float64), atol=0.005)
    # every slot is uniform too (the order is shuffled)
    first = torch.bincount(s[:, 0], minlength=items).double() / n
    assert torch.allclose(first, torch.full((items,), 1 / items, dtype=torch.float64), atol=0.01)


def test_random_subsets_full_catalog_is_a_permutation():
    s = random_subsets(100, 5, 5, _gen(), torch.device("cpu"))
    assert (s.sort(dim=1).values == torch.arange(5)).all()


def test_top_k_items_in_blocks_equals_the_full_matrix():
    g = _gen(1)
    q, x, bias = (
        torch.randn(1000, 8, generator=g),
        torch.randn(300, 8, generator=g),
        torch.randn(300, generator=g),
    )
    full = (q @ x.T + bias).topk(7, dim=1).indices
    for block in (300, 1000, 12345, 1 << 24):
        assert torch.equal(top_k_items(q, x, 7, bias=bias, block=block), full)


def _ctx(features, k=2, appeal=None):
    n_items = features.shape[0]
    cat = Catalog(
        features=features,
        appeal=torch.zeros(n_items) if appeal is None else appeal,
        quality=torch.zeros(n_items),
        topic=torch.zeros(n_items, dtype=torch.long),
    )
    return PolicyContext(
        num_users=2, slate_size=k, catalog=cat, generator=_gen(), device=torch.device("cpu")
    )


def test_oracle_greedy_picks_the_best_utility_items_best_first():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    appeal = torch.tensor([0.0, 0.0, 0.0, 3.0])  # item 3 is clickbait
    pol = OracleGreedy()
    pol.reset(_ctx(x, k=2, appeal=appeal))
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    slate = pol.act(Observation(t=0, num_users=2, true_preferences=u))
    # user 0: utilities 1, 0, .7, 2  -> [3, 0]; user 1: 0, 1, .7, 3 -> [3, 1]
    assert slate.tolist() == [[3, 0], [3, 1]]


def test_popularity_follows_clicks_and_breaks_ties_by_a_fixed_order():
    x = torch.eye(4)
    pol = Popularity()
    pol.reset(_ctx(x, k=2))
    cold = pol.act(Observation(t=0, num_users=2))
    assert (cold[0] == cold[1]).all()
    pol.update(Feedback(t=0, slate=cold, slot=torch.tensor([-1, -1]), item=torch.tensor([-1, -1])))
    assert torch.equal(pol.act(Observation(t=1, num_users=2)), cold)  # no clicks, no change
    pol.update(Feedback(t=1, slate=cold, slot=torch.tensor([0, 0]), item=torch.tensor([2, 2])))
    pol.update(Feedback(t=2, slate=cold, slot=torch.tensor([0, -1]), item=torch.tensor([1, -1])))
    assert pol.act(Observation(t=3, num_users=2))[0].tolist() == [2, 1]


def test_registry_lists_policies_and_marks_oracles():
    assert POLICIES["oracle-greedy"].oracle and make_policy("oracle-greedy").oracle
    assert not any(p.oracle for name, p in POLICIES.items() if name != "oracle-greedy")
    for name, kind in POLICIES.items():
        if not kind.trainable:
            assert make_policy(name).name == name
