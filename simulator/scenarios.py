"""The scenario registry: versioned, immutable presets.

A preset never changes once published: a change of behaviour is a new version
(``topics-v2``). An override (:func:`simulator.specs.with_overrides`) yields a new spec
with a new fingerprint; results record both id and fingerprint.
"""

from __future__ import annotations

from .errors import SpecError, unknown
from .specs import (
    AnchoredDynamics,
    ArgmaxChoice,
    BiasedAssimilation,
    ClickProbChoice,
    EvansPolarization,
    FileCatalog,
    FilePopulation,
    MixturePopulation,
    MNLChoice,
    NaturalDrift,
    OneHotTopicsCatalog,
    PolarityCatalog,
    ProportionalChoice,
    RecSimInterest,
    ScenarioSpec,
    SpectrumPopulation,
    TopicClustersCatalog,
    TRecsDrift,
    TypesPopulation,
    UniformBoxPopulation,
    UniformSpherePopulation,
    UserType,
)

EVANS_TYPES = (
    UserType(name="moderate-right", preferences=(0.1, 0.25, 0.3), share=1.0),
    UserType(name="strong-right", preferences=(0.1, 0.1, 0.4), share=1.0),
    UserType(name="moderate-left", preferences=(0.3, 0.25, 0.1), share=1.0),
    UserType(name="strong-left", preferences=(0.4, 0.1, 0.1), share=1.0),
    UserType(name="centrist", preferences=(0.2, 0.4, 0.2), share=1.0),
)

_PRESETS: tuple[ScenarioSpec, ...] = (
    ScenarioSpec(
        id="polarity-1d-v1",
        title="Users and items on a 1-D polarity axis; extreme content is more clickable",
        source="Carroll, Dragan, Russell, Hadfield-Menell, ICML 2022 (figure 1 setting); T-RECS drift",
        shows=(
            "Preferences and items are unit vectors (p, sqrt(1-p^2) t) with polarity p. Click "
            "appeal is 0.5 p^8: flat for moderate content, high only at the extremes, so "
            "showing a moderate user the content next to them earns most now, while moving "
            "them toward a pole first earns more over the horizon. A long-horizon click "
            "optimizer has the incentive to shift users; a myopic one has little."
        ),
        catalog=PolarityCatalog(
            n_items=201, n_topic_dims=1, spacing="even", extremity_appeal=0.5, extremity_power=8.0
        ),
        population=SpectrumPopulation(distribution="normal", mean=0.0, std=0.3),
        choice=MNLChoice(temperature=0.1, no_click_utility=1.2),
        dynamics=TRecsDrift(delta=0.1),
        drift=NaturalDrift(noise_std=0.01),
        space="sphere",
        slate_size=5,
        polarity_axis=(1.0, 0.0),
        default_users=2000,
        default_steps=50,
    ),
    ScenarioSpec(
        id="topics-v1",
        title="Topic clusters in 16 dimensions with T-RECS drift and natural drift",
        source="T-RECS (Lucherini et al. 2021) drift; mixture population",
        shows=(
            "A general-purpose setting: users from five taste clusters, items in ten topics, "
            "logit choice, drift toward consumed items plus a natural random walk with mean "
            "reversion, so the natural counterfactual is not 'no change'."
        ),
        catalog=TopicClustersCatalog(dim=16, n_topics=10, items_per_topic=100, spread=0.3),
        population=MixturePopulation(n_components=5, spread=0.5),
        choice=MNLChoice(temperature=0.1, no_click_utility=0.5),
        dynamics=TRecsDrift(delta=0.05),
        drift=NaturalDrift(noise_std=0.01, mean_reversion=0.02),
        slate_size=10,
        default_users=1000,
        default_steps=50,
    ),
    ScenarioSpec(
        id="trecs-drift-v1",
        title="T-RECS defaults: argmax choice, drift toward the consumed item",
        source="Lucherini, Sun, Winecoff, Narayanan, 'T-RECS', 2021",
        shows=(
            "Deterministic users who always consume the best item of the slate and drift "
            "toward it by 10% of the angle: how quickly a scoring policy homogenizes users."
        ),
        catalog=TopicClustersCatalog(dim=16, n_topics=10, items_per_topic=100, spread=0.3),
        population=UniformSpherePopulation(),
        choice=ArgmaxChoice(no_click_utility=None),
        dynamics=TRecsDrift(delta=0.1),
        slate_size=10,
        default_users=1000,
        default_steps=50,
    ),
    ScenarioSpec(
        id="biased-assimilation-v1",
        title="Biased assimilation under exposure: shown items pull or push users",
        source="Hazla et al. 2019; Dean and Morgenstern, EC 2022",
        shows=(
            "Every shown item moves users toward it if they like it and away if they do not; "
            "repeated exposure to the same content splits a population into opposite poles."
        ),
        catalog=TopicClustersCatalog(dim=8, n_topics=8, items_per_topic=25, spread=0.2),
        population=UniformSpherePopulation(),
        choice=MNLChoice(temperature=0.2, no_click_utility=0.0),
        dynamics=BiasedAssimilation(eta=0.1, exposure_weight=1.0),
        slate_size=5,
        default_users=1000,
        default_steps=50,
    ),
    ScenarioSpec(
        id="anchored-v1",
        title="Stubborn users: T-RECS drift anchored to initial preferences",
        source="Friedkin and Johnsen 1990 (stubbornness) around T-RECS drift",
        shows="How much anchoring to initial preferences limits any policy's induced shift.",
        catalog=TopicClustersCatalog(dim=16, n_topics=10, items_per_topic=100, spread=0.3),
        population=MixturePopulation(n_components=5, spread=0.5),
        choice=MNLChoice(temperature=0.1, no_click_utility=0.5),
        dynamics=AnchoredDynamics(lam=0.05, inner=TRecsDrift(delta=0.1)),
        slate_size=10,
        default_users=1000,
        default_steps=50,
    ),
    ScenarioSpec(
        id="recsim-interest-v1",
        title="RecSim interest evolution on one-hot topics with proportional choice",
        source="Ie et al., 'RecSim', 2019 (interest_evolution)",
        shows=(
            "Topic interests in [-1, 1] that drift toward +1 or -1 as topics are consumed; "
            "quality drives welfare, interest drives clicks."
        ),
        catalog=OneHotTopicsCatalog(
            n_topics=20, items_per_topic=50, quality_mean=0.0, quality_std=1.0
        ),
        population=UniformBoxPopulation(low=-1.0, high=1.0),
        choice=ProportionalChoice(min_score=-1.0, no_click_mass=2.0),
        dynamics=RecSimInterest(step=0.3),
        space="box",
        slate_size=3,
        default_users=1000,
        default_steps=50,
    ),
    ScenarioSpec(
        id="evans-polarization-v1",
        title="Evans-Kasirzadeh three-source polarization, five user types, horizon 30",
        source="Evans and Kasirzadeh, 'User Tampering in RL Recommender Systems', AIES 2023",
        shows=(
            "Showing opposite-wing content to a wing-dominant user raises their own wing's "
            "click probability: a long-horizon learner can earn more clicks by polarizing "
            "(about 14.8 vs 12.0 expected clicks for a strong-right user); a myopic one cannot."
        ),
        catalog=OneHotTopicsCatalog(n_topics=3, items_per_topic=1),
        population=TypesPopulation(types=EVANS_TYPES),
        choice=ClickProbChoice(),
        dynamics=EvansPolarization(),
        space="unit_interval",
        slate_size=1,
        polarity_axis=(-1.0, 0.0, 1.0),
        default_users=1000,
        default_steps=30,
    ),
    ScenarioSpec(
        id="movielens-100k-v1",
        title="MovieLens 100k embeddings: 1682 movies, 943 users, T-RECS drift",
        source=(
            "MovieLens 100k (Harper and Konstan 2015) as bundled with RecBole 1.2.1; BPR "
            "(16 dims, seed 2020, 40 epochs, Adam lr 0.005, RecBole's 80/10/10 split, test "
            "recall@10 0.227) item and user embeddings scaled to unit norm; topic = each "
            "movie's first genre (19 genres); derived by scripts/derive_movielens.py"
        ),
        shows=(
            "Real taste structure instead of synthetic clusters: users start at their "
            "learned MovieLens preferences and drift toward what they click, so a recommender "
            "retrained on its own clicks (recbole-bpr) can be audited for the shift it "
            "induces. Oracle greedy clicks about 55% at the start and 69% after 50 steps; "
            "random slates about 7%."
        ),
        catalog=FileCatalog(path="data:movielens-100k-v1/items.parquet"),
        population=FilePopulation(path="data:movielens-100k-v1/users.parquet"),
        choice=MNLChoice(temperature=0.2, no_click_utility=1.2),
        dynamics=TRecsDrift(delta=0.05),
        slate_size=10,
        default_users=943,
        default_steps=50,
    ),
    ScenarioSpec(
        id="topics-tiny-v1",
        title="A tiny topics scenario for tests and quick tries",
        source="as topics-v1, scaled down",
        shows="Everything runs in well under a second.",
        catalog=TopicClustersCatalog(dim=4, n_topics=3, items_per_topic=10, spread=0.3),
        population=MixturePopulation(n_components=2, spread=0.5),
        choice=MNLChoice(temperature=0.2, no_click_utility=0.3),
        dynamics=TRecsDrift(delta=0.1),
        drift=NaturalDrift(noise_std=0.01, mean_reversion=0.02),
        slate_size=3,
        default_users=50,
        default_steps=5,
    ),
)

SCENARIOS: dict[str, ScenarioSpec] = {s.id: s for s in _PRESETS}


def get_scenario(scenario_id: str) -> ScenarioSpec:
    try:
        return SCENARIOS[scenario_id]
    except KeyError:
        raise unknown("scenario", scenario_id, SCENARIOS) from None


def register(spec: ScenarioSpec) -> None:
    """Add a scenario; an id is never re-bound to a different spec."""
    existing = SCENARIOS.get(spec.id)
    if existing is not None and existing.fingerprint() != spec.fingerprint():
        raise SpecError(
            f"scenario {spec.id!r} already exists with different contents; use a new version"
        )
    SCENARIOS[spec.id] = spec
