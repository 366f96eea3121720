"""A trained learner as a Policy, and its safe on-disk form (safetensors + JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from simulator.errors import SpecError
from simulator.policy import PolicyContext
from simulator.types import Feedback, Observation

from ..features import HistoryFeatures
from .agent import ActorCritic

FORMAT = "recaudit-ppo-v1"
WEIGHTS, CONFIG = "policy.safetensors", "policy.json"


@dataclass(frozen=True)
class PolicyBundle:
    """Weights (safetensors bytes) and a JSON-able config naming what they are."""

    config: dict[str, Any]
    weights: bytes = field(repr=False)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WEIGHTS).write_bytes(self.weights)
        (directory / CONFIG).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> PolicyBundle:
        try:
            config = json.loads((directory / CONFIG).read_text())
            weights = (directory / WEIGHTS).read_bytes()
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read a policy from {directory}: {exc}") from None
        if not isinstance(config, dict):
            raise SpecError(f"{directory / CONFIG} must hold a JSON object")
        return cls(config=config, weights=weights)


def bundle_from_model(model: ActorCritic, config: dict[str, Any]) -> PolicyBundle:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = {
        **config,
        "format": FORMAT,
        "obs_dim": model.obs_dim,
        "n_items": model.n_items,
        "hidden": model.hidden,
    }
    return PolicyBundle(config=full, weights=save_tensors(state))


def model_from_bundle(bundle: PolicyBundle) -> ActorCritic:
    """Rebuild the network from the config, then load the weights strictly; nothing is
    unpickled. Refuses anything that is not exactly what the config describes."""
    cfg = bundle.config
    if cfg.get("format") != FORMAT:
        raise SpecError(f"policy config format must be {FORMAT!r}, got {cfg.get('format')!r}")
    try:
        obs_dim, n_items, hidden = int(cfg["obs_dim"]), int(cfg["n_items"]), int(cfg["hidden"])
    except (KeyError, TypeError, ValueError):
        raise SpecError("policy config needs integer obs_dim, n_items and hidden") from None
    if not (0 < obs_dim <= 100_000 and 0 < n_items <= 1_000_000 and 0 < hidden <= 4096):
        raise SpecError("policy config sizes are out of range")
    try:
        state = load_tensors(bundle.weights)
    except (SafetensorError, ValueError, OSError) as exc:
        raise SpecError(f"policy weights are not a safetensors file: {exc}") from None
    model = ActorCritic(obs_dim, n_items, hidden, torch.Generator().manual_seed(0))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpecError(f"policy weights do not match the config: {first}") from None
    model.eval()
    return model


class LearnedPolicy:
    """A trained actor acting greedily: the k items of highest logit on the platform's
    observation (the same :class:`HistoryFeatures` it was trained on)."""

    oracle = False

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle
        self.model = model_from_bundle(bundle)
        self.name = str(bundle.config.get("kind", "ppo"))
        self.horizon = int(bundle.config.get("horizon", 0)) or None

    def reset(self, ctx: PolicyContext) -> None:
        n_seg = 0 if ctx.segments is None else ctx.segments.shape[1]
        want = HistoryFeatures.dim(ctx.catalog.dim, n_seg)
        if ctx.catalog.size != self.model.n_items or want != self.model.obs_dim:
            raise SpecError(
                f"policy {self.name!r} was trained for {self.model.n_items} items and observations of size "
                f"{self.model.obs_dim}; this scenario has {ctx.catalog.size} items and size {want}"
            )
        self.model.to(ctx.device)
        self.k = ctx.slate_size
        self.features = HistoryFeatures(ctx, self.horizon)

    @torch.no_grad()
    def act(self, obs: Observation) -> torch.Tensor:
        return self.model.logits(self.features.observe()).topk(self.k, dim=1).indices

    def update(self, feedback: Feedback) -> None:
        self.features.update(feedback)
