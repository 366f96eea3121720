"""`recaudit simulate`'s memory estimate: it covers what the run keeps, and a run that
cannot fit is refused before it starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from auditor.plan import BuiltinPolicy
from auditor.simulate import (
    check_fits,
    estimate_bytes,
    per_user_frame,
    run_simulation_jobs,
    simulation_jobs,
    trajectory_frame,
)
from simulator.errors import SpecError
from simulator.scenarios import get_scenario


def _kept_bytes(outcomes) -> int:
    """Bytes of every array the outcomes hold, and of the exports built from them."""
    arrays = []
    for o in outcomes:
        arrays += [o.snapshots, o.histograms, o.mediation, o.choices, *o.per_user.values()]
    held = sum(a.nbytes for a in arrays if a is not None)
    frames = per_user_frame(outcomes), trajectory_frame(outcomes)
    return held + sum(int(f.memory_usage(index=True).sum()) for f in frames)


def test_the_estimate_covers_what_a_full_seed_keeps():
    scenario = get_scenario("topics-tiny-v1")
    [job] = simulation_jobs(
        scenario,
        BuiltinPolicy("oracle-greedy"),
        users=300,
        steps=30,
        seeds=[0],
        full=True,
        keep_ids=True,
    )
    outcomes = run_simulation_jobs([job])
    assert [o.label for o in outcomes] == ["policy", "natural"]
    kept = _kept_bytes(outcomes)
    assert estimate_bytes(job) >= kept
    # the trajectories are what makes it large: without them the estimate would not do
    [light] = simulation_jobs(
        scenario, BuiltinPolicy("oracle-greedy"), users=300, steps=30, seeds=[0]
    )
    assert estimate_bytes(light) < kept


def test_a_run_that_cannot_fit_is_refused(monkeypatch):
    import auditor.simulate

    jobs = simulation_jobs(
        get_scenario("topics-tiny-v1"), BuiltinPolicy("random"), users=1000, steps=5, seeds=[0, 1]
    )
    one = estimate_bytes(jobs[0])
    fake = SimpleNamespace(available=int(1.5 * one / 0.8))
    monkeypatch.setattr(auditor.simulate.psutil, "virtual_memory", lambda: fake)
    check_fits(jobs, concurrent=1)  # one seed at a time fits
    with pytest.raises(SpecError, match="GiB is available"):
        check_fits(jobs, concurrent=2)  # two at once do not
