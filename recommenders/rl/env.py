"""The training view of a scenario: many users as parallel environments.

Each step runs the learner's slate and, in lockstep with the same random numbers, the
natural counterfactual (the scenario's natural policy on the same users), through the
simulator's own ``step_users``: the step order is the engine's. The learner observes only
:class:`~recommenders.features.HistoryFeatures`; preferences are used for rewards only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulator.engine import Environment, draw_noise, segment_matrix, step_users
from simulator.policy import Policy, PolicyContext
from simulator.rng import Streams
from simulator.types import Feedback, Observation
from simulator.users import sample_population_with_ids, user_types

from ..baselines import UniformRandom
from ..features import HistoryFeatures
from ..penalties import RewardParts


def _click_prob(
    env: Environment, u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor
) -> torch.Tensor:
    return 1.0 - env.choice.probabilities(u, items, appeal)[:, -1]


@dataclass
class SlateEnv:
    env: Environment
    users: int
    horizon: int

    def reset(self, seed: int, natural: Policy | None = None) -> torch.Tensor:
        spec, dev = self.env.spec, self.env.device
        streams = Streams(seed, device=dev)
        u0, user_ids = sample_population_with_ids(
            spec.population,
            self.users,
            self.env.dim,
            env_seed=spec.env_seed,
            gen=Streams(seed).generator("population"),
        )
        self.u0 = u0.to(dev)
        self.u = self.u0
        self.u_nat = self.u0
        self.gens = {n: streams.generator(n) for n in ("choice", "dynamics", "drift")}
        self.learner_gen = streams.generator("learner")
        ctx = PolicyContext(
            num_users=self.users,
            slate_size=spec.slate_size,
            catalog=self.env.catalog,
            generator=streams.generator("policy"),
            device=dev,
            horizon=self.horizon,
            segments=segment_matrix(spec, user_types(spec.population, self.u0)),
            user_ids=user_ids,
        )
        self.natural = natural if natural is not None else UniformRandom()
        self.natural.reset(ctx)
        self.features = HistoryFeatures(ctx, self.horizon)
        self.t = 0
        return self.features.observe()

    def step(self, slate: torch.Tensor) -> tuple[torch.Tensor, RewardParts]:
        noise = draw_noise(self.env, self.gens, self.users)
        out = step_users(self.env, self.u, self.u0, slate, noise)
        nat_slate = self.natural.act(Observation(t=self.t, num_users=self.users)).long()
        nat = step_users(self.env, self.u_nat, self.u0, nat_slate, noise)
        self.natural.update(Feedback(t=self.t, slate=nat_slate, slot=nat.slot, item=nat.item))
        parts = RewardParts(
            click=1.0 - out.probs[:, -1],
            click_initial=_click_prob(self.env, self.u0, out.items, out.appeal),
            click_natural=_click_prob(self.env, self.u_nat, out.items, out.appeal),
            distance=(out.new_u - nat.new_u).norm(dim=1),
            clicked=(out.slot >= 0).float(),
        )
        self.features.update(Feedback(t=self.t, slate=slate, slot=out.slot, item=out.item))
        self.u, self.u_nat = out.new_u, nat.new_u
        self.t += 1
        return self.features.observe(), parts
