"""PPO (Schulman et al. 2017) for slate recommendation against the batched simulator.

One readable loop, after CleanRL's ``ppo.py``: every iteration samples a fresh population
(``users`` parallel environments), rolls the stochastic policy over the whole horizon,
computes GAE advantages with discount ``gamma``, and takes clipped-surrogate steps over
shuffled minibatches. ``gamma = 0`` is the myopic learner: the same code, horizon one.
The reward is shaped by an influence penalty (``recommenders.penalties``).

Randomness comes only from generators derived from the config's seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, model_validator

from simulator.engine import build_environment
from simulator.policy import Policy
from simulator.rng import Streams
from simulator.specs import Frozen, ScenarioSpec
from simulator.threads import trains_with_fixed_threads

from ..features import HistoryFeatures
from ..penalties import shaped_reward
from .agent import ActorCritic, first_slot_entropy, sample_slate, slate_log_prob
from .env import SlateEnv
from .policy import PolicyBundle, bundle_from_model


class PPOConfig(Frozen):
    """Everything that determines a trained learner (with the scenario's fingerprint)."""

    gamma: float = Field(0.99, ge=0.0, le=1.0, description="Discount; 0 is the myopic learner.")
    penalty: Literal["none", "safe-shift", "distance", "path-specific"] = Field(
        "none", description="Influence penalty family."
    )
    penalty_weight: float = Field(0.0, ge=0.0, description="Penalty weight; 0 is unpenalized.")
    users: int = Field(4096, ge=1, le=1_000_000, description="Parallel users per iteration.")
    iterations: int = Field(60, ge=1, le=100_000, description="Rollout + update iterations.")
    steps: int | None = Field(
        None, ge=1, le=10_000, description="Horizon (default: the scenario's)."
    )
    seed: int = Field(0, ge=0, description="Seed of everything random in training.")
    hidden: int = Field(64, ge=4, le=1024, description="Hidden units per layer.")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    epochs: int = Field(4, ge=1, le=100)
    minibatches: int = Field(8, ge=1, le=1024)
    clip: float = Field(0.2, gt=0.0, le=1.0)
    entropy_coef: float = Field(0.01, ge=0.0)
    value_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)

    @model_validator(mode="after")
    def _weights(self) -> PPOConfig:
        if self.penalty == "path-specific" and self.penalty_weight > 1:
            raise ValueError("the path-specific weight must be in [0, 1]")
        return self


@dataclass
class TrainResult:
    bundle: PolicyBundle
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    env_steps: int = 0

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds else 0.0


@trains_with_fixed_threads  # weights independent of the backend's thread count
def train_ppo(
    scenario: ScenarioSpec,
    cfg: PPOConfig,
    *,
    kind: str,
    natural: Callable[[], Policy],
    device: str = "cpu",
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    env = build_environment(scenario, device)
    dev = env.device
    horizon = cfg.steps or scenario.default_steps
    k = scenario.slate_size
    streams = Streams(cfg.seed, device=dev)
    n_seg = len(getattr(scenario.population, "types", ()))
    obs_dim = HistoryFeatures.dim(env.dim, n_seg)
    model = ActorCritic(
        obs_dim, env.catalog.size, cfg.hidden, Streams(cfg.seed).generator("init")
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5)
    shuffle = streams.generator("minibatch")
    venv = SlateEnv(env, cfg.users, horizon)
    n, t_len = cfg.users, horizon
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for it in range(cfg.iterations):
        obs_buf = torch.empty(t_len, n, obs_dim, device=dev)
        act_buf = torch.empty(t_len, n, k, dtype=torch.long, device=dev)
        logp_buf = torch.empty(t_len, n, device=dev)
        val_buf = torch.empty(t_len + 1, n, device=dev)
        rew_buf = torch.empty(t_len, n, device=dev)
        clicks = torch.zeros((), device=dev)
        obs = venv.reset(seed=cfg.seed * 1_000_003 + it, natural=natural())
        gen = venv.learner_gen
        with torch.no_grad():
            for t in range(t_len):
                logits = model.logits(obs)
                slate = sample_slate(logits, k, gen)
                obs_buf[t], act_buf[t] = obs, slate
                logp_buf[t] = slate_log_prob(logits, slate)
                val_buf[t] = model.value(obs)
                obs, parts = venv.step(slate)
                rew_buf[t] = shaped_reward(cfg.penalty, cfg.penalty_weight, parts)
                clicks += parts.clicked.sum()
            val_buf[t_len] = 0.0  # episodes end at the horizon
            adv = torch.zeros(t_len, n, device=dev)
            last = torch.zeros(n, device=dev)
            for t in reversed(range(t_len)):
                delta = rew_buf[t] + cfg.gamma * val_buf[t + 1] - val_buf[t]
                last = delta + cfg.gamma * cfg.gae_lambda * last
                adv[t] = last
            returns = adv + val_buf[:t_len]
        b_obs, b_act = obs_buf.reshape(-1, obs_dim), act_buf.reshape(-1, k)
        b_logp, b_adv, b_ret = logp_buf.reshape(-1), adv.reshape(-1), returns.reshape(-1)
        total = b_obs.shape[0]
        mb = max(1, total // cfg.minibatches)
        stats = {"loss/policy": 0.0, "loss/value": 0.0, "loss/entropy": 0.0, "loss/approx_kl": 0.0}
        updates = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(total, generator=shuffle, device=dev)
            for s in range(0, total, mb):
                idx = perm[s : s + mb]
                logits = model.logits(b_obs[idx])
                new_logp = slate_log_prob(logits, b_act[idx])
                ratio = (new_logp - b_logp[idx]).exp()
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
                v_loss = 0.5 * ((model.value(b_obs[idx]) - b_ret[idx]) ** 2).mean()
                ent = first_slot_entropy(logits).mean()
                loss = pg + cfg.value_coef * v_loss - cfg.entropy_coef * ent
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                with torch.no_grad():
                    stats["loss/policy"] += float(pg)
                    stats["loss/value"] += float(v_loss)
                    stats["loss/entropy"] += float(ent)
                    stats["loss/approx_kl"] += float(
                        ((ratio - 1) - (new_logp - b_logp[idx])).mean()
                    )
                updates += 1
        row = {key: val / updates for key, val in stats.items()}
        row["charts/clicks_per_user_step"] = float(clicks) / (n * t_len)
        row["charts/shaped_return"] = float(rew_buf.sum(0).mean())
        row["charts/final_distance_to_natural"] = float(parts.distance.mean())
        row["charts/seconds"] = time.perf_counter() - start
        history.append(row)
        if on_iteration is not None:
            on_iteration(it, row)
    seconds = time.perf_counter() - start
    config = {
        "kind": kind,
        "scenario": scenario.id,
        "scenario_fingerprint": scenario.fingerprint(),
        "horizon": horizon,
        "ppo": cfg.model_dump(mode="json"),
    }
    return TrainResult(
        bundle=bundle_from_model(model.cpu(), config),
        history=history,
        seconds=seconds,
        env_steps=cfg.iterations * n * t_len,
    )
