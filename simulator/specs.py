"""Frozen, validated specifications of everything a simulation is made of.

One schema serves every front door: the CLI reads it from a file, the REST service takes
it as a request body, and results record it with its fingerprint. Variants are picked by
a ``kind`` field; unknown fields are refused; floats must be finite.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Frozen(BaseModel):
    """Base for specs: immutable, no extra fields, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


Prob = Annotated[float, Field(ge=0.0, le=1.0)]
#: largest ``fit`` section a scenario carries (canonical JSON bytes)
MAX_FIT_BYTES = 64 * 1024
NonNeg = Annotated[float, Field(ge=0.0)]


# --------------------------------------------------------------------------- catalogs
class TopicClustersCatalog(Frozen):
    """Items in ``n_topics`` clusters on the unit sphere of R^dim.

    Topic centres are uniform on the sphere; an item is ``normalize(centre + spread * z)``
    with ``z`` standard normal. Optional appeal (drives clicks) and quality (drives
    welfare) are normal with the given standard deviations.
    """

    kind: Literal["topic_clusters"] = "topic_clusters"
    dim: int = Field(16, ge=1, le=4096, description="Dimension of item and preference vectors.")
    n_topics: int = Field(10, ge=1, description="Number of topic clusters.")
    items_per_topic: int = Field(100, ge=1, description="Items generated per topic.")
    spread: NonNeg = Field(0.3, description="Within-topic noise standard deviation.")
    appeal_std: NonNeg = Field(0.0, description="Std of click appeal added to click utility.")
    quality_std: NonNeg = Field(0.0, description="Std of item quality added to welfare.")


class PolarityCatalog(Frozen):
    """Items on a 1-D polarity axis plus ``n_topic_dims`` topic dimensions.

    An item with polarity ``p`` in [-1, 1] is ``(p, sqrt(1 - p^2) * t)`` with ``t`` a random
    unit vector in the topic dimensions (dim = 1 + n_topic_dims), so every item is a unit
    vector and the first coordinate is its position on the axis. Polarities are evenly
    spaced (``spacing="even"``) or uniform at random. Click appeal grows with extremity:
    ``appeal = extremity_appeal * |p| ** extremity_power`` (extreme content is more
    clickable, the setting in which a long-horizon click optimizer gains by moving users).
    """

    kind: Literal["polarity"] = "polarity"
    n_items: int = Field(200, ge=2, description="Number of items.")
    n_topic_dims: int = Field(1, ge=1, le=4095, description="Dimensions besides the polarity axis.")
    spacing: Literal["even", "uniform"] = Field("even", description="How polarities are placed.")
    extremity_appeal: float = Field(0.0, description="Appeal at |p| = 1.")
    extremity_power: float = Field(2.0, gt=0.0, description="Exponent of |p| in the appeal.")
    quality_std: NonNeg = Field(0.0, description="Std of item quality added to welfare.")


class OneHotTopicsCatalog(Frozen):
    """RecSim-style documents: each item is the one-hot vector of its topic, with a quality.

    Quality is normal(quality_mean, quality_std), the value a consumed item brings to the
    user's welfare (RecSim interest evolution). ``appeal_std`` adds click appeal.
    """

    kind: Literal["onehot_topics"] = "onehot_topics"
    n_topics: int = Field(20, ge=1, le=4096, description="Number of topics (the dimension).")
    items_per_topic: int = Field(50, ge=1, description="Items per topic.")
    quality_mean: float = Field(0.0, description="Mean item quality.")
    quality_std: NonNeg = Field(0.0, description="Std of item quality.")
    appeal_std: NonNeg = Field(0.0, description="Std of click appeal.")


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class FileCatalog(Frozen):
    """A catalog read from a ``.npy`` matrix (items x dim; loaded with allow_pickle=False)
    or a ``.parquet`` table with columns ``f0..f{d-1}`` and optional ``appeal``,
    ``quality``, ``topic`` and ``item_id`` (each item's stable string id; default: its
    index). With ``sha256`` the file must have that digest, and the scenario's
    fingerprint names the file by its content instead of its path."""

    kind: Literal["file"] = "file"
    path: str = Field(..., min_length=1, description="Path of a .npy or .parquet file.")
    sha256: Sha256 | None = Field(None, description="SHA-256 of the file's bytes.")


CatalogSpec = Annotated[
    TopicClustersCatalog | PolarityCatalog | OneHotTopicsCatalog | FileCatalog,
    Field(discriminator="kind"),
]


# ------------------------------------------------------------------------ populations
class UniformSpherePopulation(Frozen):
    """Initial preferences uniform on the unit sphere."""

    kind: Literal["uniform_sphere"] = "uniform_sphere"


class MixturePopulation(Frozen):
    """A mixture of ``n_components`` clusters on the unit sphere.

    Centres are uniform on the sphere and fixed by the scenario's environment seed; a
    user is ``normalize(centre + spread * z)``. Weights default to equal shares.
    """

    kind: Literal["mixture"] = "mixture"
    n_components: int = Field(3, ge=1, description="Number of mixture components.")
    spread: NonNeg = Field(0.3, description="Within-component noise standard deviation.")
    weights: tuple[NonNeg, ...] | None = Field(None, description="Component weights.")

    @model_validator(mode="after")
    def _weights(self) -> MixturePopulation:
        if self.weights is not None:
            if len(self.weights) != self.n_components:
                raise ValueError("weights must have n_components entries")
            if sum(self.weights) <= 0:
                raise ValueError("weights must not all be zero")
        return self


class SpectrumPopulation(Frozen):
    """Users on the polarity axis of a :class:`PolarityCatalog`-shaped space.

    Polarity ``p`` is drawn from ``normal(mean, std)`` or ``uniform(mean - std*sqrt(3),
    mean + std*sqrt(3))`` and clipped to [-clip, clip]; the user is
    ``(p, sqrt(1 - p^2) * t)`` with ``t`` a random unit vector in the remaining dimensions.
    """

    kind: Literal["spectrum"] = "spectrum"
    distribution: Literal["normal", "uniform"] = Field("normal", description="Shape of p.")
    mean: float = Field(0.0, ge=-1.0, le=1.0, description="Centre of the polarity.")
    std: NonNeg = Field(0.3, description="Spread of the polarity.")
    clip: float = Field(0.99, gt=0.0, le=1.0, description="Largest |p|.")


class UniformBoxPopulation(Frozen):
    """Independent uniform interests in [low, high] per dimension (RecSim)."""

    kind: Literal["uniform_box"] = "uniform_box"
    low: float = Field(-1.0, description="Lower bound.")
    high: float = Field(1.0, description="Upper bound.")

    @model_validator(mode="after")
    def _order(self) -> UniformBoxPopulation:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        return self


class UserType(Frozen):
    """A user type: a fixed preference vector and its share of the population."""

    name: str = Field(..., min_length=1, description="Type name.")
    preferences: tuple[float, ...] = Field(..., min_length=1, description="Preference vector.")
    share: float = Field(..., gt=0.0, description="Relative share of the population.")


class TypesPopulation(Frozen):
    """A population made of fixed user types in exact shares (largest remainder), in an
    order shuffled by the run's population stream."""

    kind: Literal["types"] = "types"
    types: tuple[UserType, ...] = Field(..., min_length=1, description="The user types.")


class FilePopulation(Frozen):
    """Initial preferences read from a ``.npy`` (allow_pickle=False) or ``.parquet`` file
    (columns ``f0..f{d-1}``, optional ``user_id``). With fewer rows than users, rows are
    drawn with replacement by the population stream; with as many or more, the first
    ``users`` rows are taken in order. ``sha256`` as for :class:`FileCatalog`."""

    kind: Literal["file"] = "file"
    path: str = Field(..., min_length=1, description="Path of a .npy or .parquet file.")
    sha256: Sha256 | None = Field(None, description="SHA-256 of the file's bytes.")


PopulationSpec = Annotated[
    UniformSpherePopulation
    | MixturePopulation
    | SpectrumPopulation
    | UniformBoxPopulation
    | TypesPopulation
    | FilePopulation,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------- choice models
class MNLChoice(Frozen):
    """Multinomial logit with an outside (no-click) option.

    ``P(i) = w_i exp(s_i / T) / (exp(c0 / T) + sum_j w_j exp(s_j / T))`` with click utility
    ``s_i = <u, x_i> + appeal_i``, temperature ``T``, no-click utility ``c0`` (None: the
    user always clicks) and position weights ``w_j = position_bias ** j`` (1: none).
    """

    kind: Literal["mnl"] = "mnl"
    temperature: float = Field(0.1, gt=0.0, description="Softmax temperature T = 1/beta.")
    no_click_utility: float | None = Field(0.0, description="Utility c0 of not clicking.")
    position_bias: float = Field(1.0, gt=0.0, le=1.0, description="Attention decay per slot.")


class ProportionalChoice(Frozen):
    """RecSim's proportional choice: ``P(i) = w_i (s_i - min_score) / (sum_j w_j (s_j -
    min_score) + no_click_mass)``, scores clipped at ``min_score``."""

    kind: Literal["proportional"] = "proportional"
    min_score: float = Field(-1.0, description="Score with zero choice weight.")
    no_click_mass: NonNeg = Field(2.0, description="Weight of the no-click option.")
    position_bias: float = Field(1.0, gt=0.0, le=1.0, description="Attention decay per slot.")


class ArgmaxChoice(Frozen):
    """Deterministic choice of the highest click utility (the T-RECS default), the
    ``T -> 0`` limit of the logit; no click if it is below ``no_click_utility``. Ties go
    to the earlier slot."""

    kind: Literal["argmax"] = "argmax"
    no_click_utility: float | None = Field(None, description="Clicks need s_i >= c0.")


class ClickProbChoice(Frozen):
    """Each preference coordinate is a click probability: the user examines one slot,
    chosen uniformly, and clicks item ``i`` with probability ``clip(<u, x_i>, 0, 1)``
    (the Evans-Kasirzadeh model, where slates have one item)."""

    kind: Literal["click_prob"] = "click_prob"


ChoiceSpec = Annotated[
    MNLChoice | ProportionalChoice | ArgmaxChoice | ClickProbChoice,
    Field(discriminator="kind"),
]


# -------------------------------------------------------------------------- dynamics
class _ItemTriggered(Frozen):
    click_weight: NonNeg = Field(1.0, description="Update weight of the clicked item.")
    exposure_weight: NonNeg = Field(
        0.0, description="Update weight of each shown-but-not-chosen item (mere exposure)."
    )


class NoDynamics(Frozen):
    """Static preferences."""

    kind: Literal["none"] = "none"


class TRecsDrift(_ItemTriggered):
    """T-RECS drift: spherical interpolation toward the item by fraction ``delta * w``."""

    kind: Literal["trecs"] = "trecs"
    delta: Prob = Field(0.1, description="Fraction of the angle to the item closed per update.")


class BiasedAssimilation(_ItemTriggered):
    """``u' = normalize(u + eta * w * <u, x> x)`` (Hazla et al.; Dean and Morgenstern)."""

    kind: Literal["biased_assimilation"] = "biased_assimilation"
    eta: NonNeg = Field(0.1, description="Assimilation rate.")


class BoundedConfidence(_ItemTriggered):
    """Items within angle ``epsilon`` of u move it by fraction ``mu * w`` of the angle."""

    kind: Literal["bounded_confidence"] = "bounded_confidence"
    epsilon: float = Field(0.8, gt=0.0, le=3.1416, description="Confidence angle (radians).")
    mu: Prob = Field(0.2, description="Fraction of the angle closed.")


class AnchoredDynamics(Frozen):
    """Friedkin-Johnsen stubbornness: ``u' = normalize(lam * u0 + (1 - lam) * f(u, x))``."""

    kind: Literal["anchored"] = "anchored"
    lam: Prob = Field(0.1, description="Weight of the initial preferences every step.")
    inner: TRecsDrift | BiasedAssimilation | BoundedConfidence = Field(
        default_factory=TRecsDrift, discriminator="kind", description="The inner update f."
    )


class RecSimInterest(_ItemTriggered):
    """RecSim interest evolution on one-hot topics (see ``simulator.dynamics``)."""

    kind: Literal["recsim_interest"] = "recsim_interest"
    step: NonNeg = Field(0.3, description="Update size factor (RecSim: 0.3).")


class EvansPolarization(Frozen):
    """Evans and Kasirzadeh's three-source polarization (see ``simulator.dynamics``)."""

    kind: Literal["evans"] = "evans"
    factor_low: float = Field(1.01, ge=1.0, description="Lower bound of the factor f.")
    factor_high: float = Field(1.10, ge=1.0, description="Upper bound of the factor f.")
    cap: Prob = Field(0.75, description="Largest click probability a wing can reach.")
    exposure_weight: NonNeg = Field(
        1.0, description="1: every shown item acts (the model's exposure trigger)."
    )
    click_weight: NonNeg = Field(1.0, description="Weight of a clicked item.")

    @model_validator(mode="after")
    def _order(self) -> EvansPolarization:
        if self.factor_high < self.factor_low:
            raise ValueError("factor_high must be at least factor_low")
        return self


DynamicsSpec = Annotated[
    NoDynamics
    | TRecsDrift
    | BiasedAssimilation
    | BoundedConfidence
    | AnchoredDynamics
    | RecSimInterest
    | EvansPolarization,
    Field(discriminator="kind"),
]


class NaturalDrift(Frozen):
    """Recommendation-independent drift applied every step after the item updates:
    ``u' = u + mean_reversion * (u0 - u) + noise_std * z``, z standard normal."""

    noise_std: NonNeg = Field(0.0, description="Random-walk step standard deviation.")
    mean_reversion: Prob = Field(0.0, description="Pull toward the initial preferences.")


# -------------------------------------------------------------------------- scenario
class ScenarioSpec(Frozen):
    """A complete, versioned simulation environment."""

    id: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9.-]*-v[0-9]+$", description="Id, e.g. topics-v1."
    )
    title: str = Field("", description="One-line title.")
    source: str = Field("", description="Where the model comes from.")
    shows: str = Field("", description="What the scenario is meant to show.")
    catalog: CatalogSpec
    population: PopulationSpec
    choice: ChoiceSpec
    dynamics: DynamicsSpec
    drift: NaturalDrift = Field(default_factory=NaturalDrift)
    space: Literal["sphere", "box", "unit_interval", "free"] = Field(
        "sphere", description="Where preferences live; enforced after every step."
    )
    slate_size: int = Field(10, ge=1, le=1000, description="Items shown per step.")
    polarity_axis: tuple[float, ...] | None = Field(
        None, description="Direction of the polarity axis (None: first principal direction)."
    )
    natural_policy: str = Field("random", description="Policy of the natural counterfactual.")
    env_seed: int = Field(0, ge=0, description="Seed of the environment (catalog, centres).")
    default_users: int = Field(1000, ge=1)
    default_steps: int = Field(50, ge=1)
    axis_free: bool = Field(
        False,
        description=(
            "True: the scenario has no meaningful polarity axis (a scenario derived from data "
            "without a named polarity attribute). Audits then default to axis-free criteria; "
            "axis metrics use the first principal direction and describe, never judge."
        ),
    )
    fit: dict[str, Any] | None = Field(
        None,
        description=(
            "The fit of the scenario's dynamics to data (family, estimates, intervals, ...), "
            f"free-form JSON of at most {MAX_FIT_BYTES // 1024} KiB; None when assumed."
        ),
    )

    @field_validator("fit")
    @classmethod
    def _fit_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        try:
            text = json.dumps(v, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"fit must be finite JSON: {exc}") from None
        if len(text.encode()) > MAX_FIT_BYTES:
            raise ValueError(f"fit is over {MAX_FIT_BYTES // 1024} KiB of JSON")
        return v

    def fingerprint(self) -> str:
        """Identifies the scenario's behaviour. Fields added after a scenario was published
        count only when set (so published fingerprints stay), and a data file with a
        recorded SHA-256 counts by its content, not its path (a derived scenario's
        directory can move). A fit's wall-clock ``seconds`` does not count: the same log
        and seed give the same fingerprint."""
        data = self.model_dump(mode="json")
        for key, default in (("axis_free", False), ("fit", None)):
            if data[key] == default:
                del data[key]
        if isinstance(data.get("fit"), dict):
            data["fit"].pop("seconds", None)
        for part in ("catalog", "population"):
            if data[part].get("kind") == "file":
                del data[part]["path" if data[part]["sha256"] else "sha256"]
        return fingerprint(data)


def canonical_json(obj: BaseModel | dict[str, Any]) -> str:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def fingerprint(obj: BaseModel | dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON form."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def with_overrides(spec: ScenarioSpec, changes: dict[str, Any]) -> ScenarioSpec:
    """A new validated spec with dotted-path overrides, e.g. ``{"dynamics.delta": 0.2}``.

    The id is kept; the fingerprint changes, and results record both, so an overridden
    scenario is never mistaken for the registered preset.
    """
    data = spec.model_dump(mode="python")
    for path, value in changes.items():
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"no field {path!r} in scenario {spec.id}")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"no field {path!r} in scenario {spec.id}")
        node[parts[-1]] = value
    return ScenarioSpec.model_validate(data)
