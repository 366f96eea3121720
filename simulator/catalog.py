"""Catalog generators. A catalog is part of the environment: it is generated from the
scenario's ``env_seed`` (never the run seed) on the CPU, so every replicate, arm and
device sees the same items."""

from __future__ import annotations

import torch

from .errors import SpecError
from .geometry import unit
from .io import ITEM_ID_COLUMN, id_column, read_matrix
from .rng import Streams
from .specs import (
    CatalogSpec,
    FileCatalog,
    OneHotTopicsCatalog,
    PolarityCatalog,
    TopicClustersCatalog,
)
from .types import Catalog


def random_unit(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """n vectors uniform on the unit sphere of R^dim (normalized Gaussians)."""
    return unit(torch.randn(n, dim, generator=gen))


def build_catalog(spec: CatalogSpec, env_seed: int) -> Catalog:
    gen = Streams(env_seed).generator("catalog")
    ids: tuple[str, ...] = ()
    if isinstance(spec, TopicClustersCatalog):
        centres = random_unit(spec.n_topics, spec.dim, gen)
        topic = torch.arange(spec.n_topics).repeat_interleave(spec.items_per_topic)
        noise = torch.randn(topic.numel(), spec.dim, generator=gen)
        features = unit(centres[topic] + spec.spread * noise)
        appeal = spec.appeal_std * torch.randn(topic.numel(), generator=gen)
        quality = spec.quality_std * torch.randn(topic.numel(), generator=gen)
    elif isinstance(spec, PolarityCatalog):
        n = spec.n_items
        if spec.spacing == "even":
            p = torch.linspace(-1.0, 1.0, n)
        else:
            p = torch.rand(n, generator=gen) * 2 - 1
        t = random_unit(n, spec.n_topic_dims, gen)
        features = torch.cat([p[:, None], (1 - p**2).clamp_min(0).sqrt()[:, None] * t], dim=1)
        appeal = spec.extremity_appeal * p.abs() ** spec.extremity_power
        quality = spec.quality_std * torch.randn(n, generator=gen)
        # topics: 10 equal-width bins of polarity, so diversity metrics have a meaning
        topic = ((p + 1) / 2 * 10).long().clamp(0, 9)
    elif isinstance(spec, OneHotTopicsCatalog):
        topic = torch.arange(spec.n_topics).repeat_interleave(spec.items_per_topic)
        features = torch.nn.functional.one_hot(topic, spec.n_topics).float()
        quality = spec.quality_mean + spec.quality_std * torch.randn(topic.numel(), generator=gen)
        appeal = spec.appeal_std * torch.randn(topic.numel(), generator=gen)
    elif isinstance(spec, FileCatalog):
        mat, table = read_matrix(spec.path, what="catalog", sha256=spec.sha256)
        features = torch.from_numpy(mat)
        k = features.shape[0]

        def column(name: str, default: torch.Tensor) -> torch.Tensor:
            if table is None or name not in table.columns:
                return default
            values = torch.tensor(table[name].to_numpy(), dtype=default.dtype)
            if values.dtype.is_floating_point and not torch.isfinite(values).all():
                raise SpecError(
                    f"catalog column {name!r} in {spec.path} has NaN or infinite values"
                )
            return values

        appeal = column("appeal", torch.zeros(k))
        quality = column("quality", torch.zeros(k))
        topic = column("topic", features.argmax(dim=1))
        if table is not None and ITEM_ID_COLUMN in table.columns:
            ids = id_column(table, ITEM_ID_COLUMN, spec.path, "item")
    else:  # pragma: no cover - the union is closed
        raise SpecError(f"unknown catalog kind {spec!r}")
    return Catalog(
        features=features.float().contiguous(),
        appeal=appeal.float(),
        quality=quality.float(),
        topic=topic.long(),
        item_ids=ids,
    )


def catalog_dim(spec: CatalogSpec, env_seed: int) -> int:
    """The dimension of a catalog without building a large one where avoidable."""
    if isinstance(spec, TopicClustersCatalog):
        return spec.dim
    if isinstance(spec, PolarityCatalog):
        return 1 + spec.n_topic_dims
    if isinstance(spec, OneHotTopicsCatalog):
        return spec.n_topics
    return build_catalog(spec, env_seed).dim


__all__ = ["build_catalog", "catalog_dim"]
