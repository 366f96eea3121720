"""Initial-preference samplers.

Structure that belongs to the environment (mixture centres) comes from the scenario's
``env_seed``; the users themselves come from the run's ``population`` stream, so each
replicate draws a fresh population from the same distribution. Sampling happens on the
CPU and the result is moved to the run's device, so a seed means the same users
everywhere.
"""

from __future__ import annotations

import torch

from .errors import SpecError
from .geometry import random_unit, unit
from .io import USER_ID_COLUMN, id_column, read_matrix
from .rng import Streams
from .specs import (
    FilePopulation,
    MixturePopulation,
    PopulationSpec,
    SpectrumPopulation,
    TypesPopulation,
    UniformBoxPopulation,
    UniformSpherePopulation,
)


def exact_counts(shares: list[float], n: int) -> list[int]:
    """Largest-remainder apportionment of n users to shares (sums to n exactly)."""
    total = sum(shares)
    raw = [s / total * n for s in shares]
    counts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def sample_population(
    spec: PopulationSpec, n: int, dim: int, *, env_seed: int, gen: torch.Generator
) -> torch.Tensor:
    """[n, dim] float32 initial preferences. ``gen`` is the run's CPU population stream."""
    return sample_population_with_ids(spec, n, dim, env_seed=env_seed, gen=gen)[0]


def sample_population_with_ids(
    spec: PopulationSpec, n: int, dim: int, *, env_seed: int, gen: torch.Generator
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """:func:`sample_population` and the users' string ids: a file population's
    ``user_id`` column where it has one (a row drawn again, when the file has fewer rows
    than users, is ``<id>#<user index>`` so ids stay distinct), else ``str(index)``
    (returned as ``()``, the default of :class:`~simulator.policy.PolicyContext`)."""
    if isinstance(spec, FilePopulation):
        return _file_population(spec, n, dim, gen)
    return _sample(spec, n, dim, env_seed=env_seed, gen=gen), ()


def _sample(
    spec: PopulationSpec, n: int, dim: int, *, env_seed: int, gen: torch.Generator
) -> torch.Tensor:
    if isinstance(spec, UniformSpherePopulation):
        return random_unit(n, dim, gen)
    if isinstance(spec, MixturePopulation):
        centres = random_unit(spec.n_components, dim, Streams(env_seed).generator("mixture"))
        weights = torch.tensor(spec.weights or [1.0] * spec.n_components, dtype=torch.float64)
        comp = torch.multinomial(weights, n, replacement=True, generator=gen)
        return unit(centres[comp] + spec.spread * torch.randn(n, dim, generator=gen))
    if isinstance(spec, SpectrumPopulation):
        z = (
            torch.randn(n, generator=gen)
            if spec.distribution == "normal"
            else ((torch.rand(n, generator=gen) * 2 - 1) * 3**0.5)
        )
        p = (spec.mean + spec.std * z).clamp(-spec.clip, spec.clip)
        if dim == 1:
            return p[:, None].contiguous()
        t = random_unit(n, dim - 1, gen)
        return torch.cat([p[:, None], (1 - p**2).sqrt()[:, None] * t], dim=1)
    if isinstance(spec, UniformBoxPopulation):
        return spec.low + (spec.high - spec.low) * torch.rand(n, dim, generator=gen)
    if isinstance(spec, TypesPopulation):
        for ut in spec.types:
            if len(ut.preferences) != dim:
                raise SpecError(
                    f"user type {ut.name!r} has {len(ut.preferences)} preferences, the catalog has dimension {dim}"
                )
        counts = exact_counts([t.share for t in spec.types], n)
        type_idx = torch.repeat_interleave(torch.arange(len(spec.types)), torch.tensor(counts))
        type_idx = type_idx[torch.randperm(n, generator=gen)]
        table = torch.tensor([t.preferences for t in spec.types], dtype=torch.float32)
        return table[type_idx].contiguous()
    raise SpecError(f"unknown population kind {spec!r}")  # pragma: no cover


def _file_population(
    spec: FilePopulation, n: int, dim: int, gen: torch.Generator
) -> tuple[torch.Tensor, tuple[str, ...]]:
    mat, table = read_matrix(spec.path, what="population", sha256=spec.sha256)
    if mat.shape[1] != dim:
        raise SpecError(
            f"population file {spec.path} has dimension {mat.shape[1]}, the catalog {dim}"
        )
    rows = torch.from_numpy(mat)
    file_ids: tuple[str, ...] = ()
    if table is not None and USER_ID_COLUMN in table.columns:
        file_ids = id_column(table, USER_ID_COLUMN, spec.path, "user")
    if rows.shape[0] >= n:
        return rows[:n].clone(), file_ids[:n]
    idx = torch.randint(rows.shape[0], (n,), generator=gen)
    ids: tuple[str, ...] = ()
    if file_ids:
        seen: set[int] = set()
        out = []
        for b, r in enumerate(idx.tolist()):
            out.append(file_ids[r] if r not in seen else f"{file_ids[r]}#{b}")
            seen.add(r)
        ids = tuple(out)
    return rows[idx].contiguous(), ids


def user_types(spec: PopulationSpec, initial: torch.Tensor) -> torch.Tensor | None:
    """For a types population, the type index of each user (by matching vectors)."""
    if not isinstance(spec, TypesPopulation):
        return None
    table = torch.tensor(
        [t.preferences for t in spec.types], dtype=initial.dtype, device=initial.device
    )
    return torch.cdist(initial, table).argmin(dim=1)
