"""Named random streams derived from one seed.

Library code never touches global random state. A run owns a :class:`Streams` object
built from its seed; every consumer asks for a generator by name ("population",
"choice", "dynamics", "policy", ...). Each name maps to an independent stream through
numpy's :class:`~numpy.random.SeedSequence` (the name is hashed into the spawn key), so
adding a new consumer never shifts the numbers another consumer sees.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for stream ``name`` of root ``seed`` (stable across platforms)."""
    if seed < 0:
        raise ValueError("seed must be non-negative")
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(_name_key(name),))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class Streams:
    """Factory of independent, reproducible ``torch.Generator`` objects.

    ``Streams(7).generator("choice")`` always yields the same sequence; each call returns a
    fresh generator at the start of that stream, so two arms of a paired comparison that
    ask for ``"policy"`` draw identical numbers.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        if seed < 0:
            raise ValueError("seed must be non-negative")
        self.seed = int(seed)
        self.device = torch.device(device)

    def generator(self, name: str) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, name))
        return gen

    def numpy(self, name: str) -> np.random.Generator:
        return np.random.default_rng(derive_seed(self.seed, name))
