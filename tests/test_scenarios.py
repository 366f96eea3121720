"""Every registered scenario passes conformance and determinism checks."""

from __future__ import annotations

import pytest

from recommenders.baselines import OracleGreedy, Popularity, UniformRandom
from simulator.checks import ConformanceError, check_scenario
from simulator.errors import SpecError
from simulator.scenarios import SCENARIOS, get_scenario, register
from simulator.specs import ScenarioSpec, with_overrides


@pytest.mark.parametrize("scenario_id", sorted(SCENARIOS))
@pytest.mark.parametrize("policy", [UniformRandom, Popularity, OracleGreedy])
def test_scenario_conformance(scenario_id, policy):
    check_scenario(get_scenario(scenario_id), policy)


@pytest.mark.parametrize("scenario_id", sorted(SCENARIOS))
def test_scenarios_are_documented_and_versioned(scenario_id):
    spec = get_scenario(scenario_id)
    assert spec.id.rsplit("-v", 1)[1].isdigit()
    assert spec.title and spec.source and spec.shows
    # the JSON form round-trips to an equal spec with the same fingerprint
    again = ScenarioSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.fingerprint() == spec.fingerprint()


def test_fingerprints_are_pinned():
    """A preset never changes once published: changing one must be a new version."""
    pinned = {
        "evans-polarization-v1": get_scenario("evans-polarization-v1").fingerprint(),
    }
    assert len({s.fingerprint() for s in SCENARIOS.values()}) == len(SCENARIOS)
    assert pinned["evans-polarization-v1"] == EVANS_FINGERPRINT


EVANS_FINGERPRINT = "95b551f92015d095"


def test_overrides_make_a_new_fingerprint_and_are_validated():
    spec = get_scenario("topics-v1")
    changed = with_overrides(spec, {"dynamics.delta": 0.2})
    assert changed.dynamics.delta == 0.2
    assert changed.fingerprint() != spec.fingerprint()
    with pytest.raises(KeyError):
        with_overrides(spec, {"dynamics.nope": 1})
    with pytest.raises(ValueError):
        with_overrides(spec, {"dynamics.delta": 1.5})
    with pytest.raises(ValueError):
        with_overrides(spec, {"dynamics.delta": float("nan")})


def test_registry_refuses_rebinding_an_id():
    spec = get_scenario("topics-v1")
    register(spec)  # same contents: fine
    with pytest.raises(SpecError, match="new version"):
        register(with_overrides(spec, {"slate_size": 3}))


def test_unknown_scenario_suggests_a_close_match():
    with pytest.raises(SpecError, match="did you mean 'topics-v1'"):
        get_scenario("topics-v")


def test_check_scenario_catches_a_broken_pairing():
    class Leaky(UniformRandom):
        """Draws from a global counter, so two instances behave differently."""

        count = 0

        def act(self, obs):
            Leaky.count += 1
            slate = super().act(obs)
            return slate.roll(Leaky.count, dims=1) if Leaky.count % 2 else slate.flip(1)

    with pytest.raises(ConformanceError):
        check_scenario(get_scenario("topics-tiny-v1"), Leaky)
