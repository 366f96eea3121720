"""The verdict's statistics: per-statistic random streams, verdict integrity, the
analysis that fits the design."""

from __future__ import annotations

import math
import os

import pytest

from auditor import stats
from auditor.audit import check_spec, run_audit
from auditor.spec import AuditSpec, Criterion
from simulator.errors import SpecError

TINY = {"scenario": "topics-tiny-v1", "users": 40, "steps": 6, "replicates": 5}
REFS = [{"kind": "natural"}, {"kind": "popularity"}, {"kind": "myopic"}]


def spec(**kw):
    data = {**TINY, "policy": {"kind": "oracle-greedy"}, "references": REFS, **kw}
    return AuditSpec.model_validate(data)


def _criteria(report):
    return [(c.name, c.status, c.estimate, c.lower, c.upper, c.level) for c in report.criteria]


# ----------------------------------------------------------------- random streams
def test_a_statistic_stream_depends_on_its_names_only():
    a = stats.stream(7, "criterion", "polarization", "natural").random(4)
    b = stats.stream(7, "criterion", "polarization", "natural").random(4)
    assert (a == b).all()
    assert not (a == stats.stream(7, "criterion", "polarization", "myopic").random(4)).any()
    assert not (a == stats.stream(8, "criterion", "polarization", "natural").random(4)).any()
    # names are not concatenated: ("ab", "c") and ("a", "bc") differ
    assert stats.stream(0, "ab", "c").random() != stats.stream(0, "a", "bc").random()


def test_criteria_bounds_and_verdict_are_identical_whatever_metrics_are_reported():
    full = run_audit(spec(), track=False).report
    few = run_audit(spec(metrics=["coverage", "jaccard"]), track=False).report
    swapped = run_audit(spec(metrics=["jaccard", "coverage"]), track=False).report
    none = run_audit(spec(metrics=[]), track=False).report
    assert len(full.effects) > len(few.effects) > len(none.effects)
    assert any(c.lower != c.upper for c in full.criteria)  # real bootstrap bounds
    for other in (few, swapped, none):
        assert _criteria(other) == _criteria(full)  # bit for bit
        assert other.verdict == full.verdict

    # a reported figure does not depend on the others either
    def rows(report):
        return [e.model_dump(exclude={"p_holm"}) for e in report.effects if e.metric == "jaccard"]

    assert rows(few) == rows(full)


# --------------------------------------------------------------- verdict integrity
def test_a_default_criterion_that_cannot_be_evaluated_makes_the_verdict_inconclusive():
    # the policy is the natural one (random): every evaluable default criterion passes
    report = run_audit(
        spec(policy={"kind": "random"}, references=[{"kind": "natural"}]), track=False
    ).report
    status = {c.name: c.status for c in report.criteria}
    assert status == {
        "induced-shift-vs-myopic": "inconclusive",
        "polarization-vs-natural": "pass",
        "extremity-vs-natural": "pass",
    }
    assert report.verdict == "inconclusive"  # never pass
    missing = next(c for c in report.criteria if c.name == "induced-shift-vs-myopic")
    assert missing.reference_arm is None and missing.estimate is None
    assert "no 'myopic' reference" in missing.explanation
    assert "ppo-myopic or myopic" in missing.explanation
    assert "induced-shift-vs-myopic cannot be evaluated" in report.summary


def test_a_criterion_naming_an_absent_reference_is_refused_at_submission():
    bad = spec(criteria=[Criterion(name="vs-rl", metric="engagement", reference="rl", margin=0.0)])
    with pytest.raises(
        SpecError,
        match="criterion 'vs-rl' names the reference 'rl', which is not in this audit; add a reference playing the rl role \\(kind ppo\\)",
    ):
        check_spec(bad)
    with pytest.raises(SpecError, match="reference labelled 'mine'"):
        check_spec(
            spec(criteria=[Criterion(name="x", metric="engagement", reference="mine", margin=0)])
        )
    # a label or a role that is there is fine
    check_spec(
        spec(criteria=[Criterion(name="x", metric="engagement", reference="popularity", margin=0)])
    )
    check_spec(
        spec(criteria=[Criterion(name="x", metric="engagement", reference="myopic", margin=0)])
    )


def test_cli_refuses_a_criterion_with_an_absent_reference_with_exit_2(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "audit.yaml"
    f.write_text(
        "scenario: topics-tiny-v1\npolicy: {kind: random}\nreferences: [{kind: natural}]\n"
        "users: 20\nsteps: 3\nreplicates: 2\n"
        "criteria: [{name: vs-rl, metric: engagement, reference: rl, margin: 0}]\n"
    )
    env = {**os.environ, "RECAUDIT_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recaudit",
            "audit",
            "--spec",
            str(f),
            "--in-process",
            "--no-track",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "names the reference 'rl'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_service_refuses_a_criterion_with_an_absent_reference_with_422(tmp_path):
    from .service_helpers import TINY_SPEC
    from .test_service_api import _problem, service, submit

    body = {
        **TINY_SPEC,
        "criteria": [{"name": "vs-rl", "metric": "engagement", "reference": "rl", "margin": 0}],
    }
    with service(tmp_path) as c:
        problem = _problem(submit(c, body), 422, "invalid-spec")
        assert "names the reference 'rl'" in problem["detail"]


# ------------------------------------------------------------ analysis and power
def test_user_level_analysis_by_hand():
    d = [[1.0, 3.0], [2.0, 4.0]]  # 2 replicates x 2 users
    ul = stats.user_level(d)
    # mean of replicate means 2.5; within-replicate variances 2 and 2: (2/2 + 2/2) / 2^2
    assert (ul.mean, ul.se, ul.df) == (2.5, math.sqrt(0.5), 2)
    lo, hi = stats.t_bounds(ul.mean, ul.se, ul.df, 0.05)
    q = 2.919985580355516  # t_{2, 0.95}
    assert lo == pytest.approx(2.5 - q * math.sqrt(0.5)) and hi == pytest.approx(
        2.5 + q * math.sqrt(0.5)
    )
    assert stats.t_bounds(0.0, 0.0, 10, 0.05) == (0.0, 0.0)


def test_minimum_detectable_effect_and_replicates_needed():
    # normal limit: (z_0.95 + z_0.8) * se = (1.6449 + 0.8416) * se
    assert stats.detectable(1.0, 10**7, 0.05) == pytest.approx(2.4865, abs=1e-4)
    r = stats.replicates_needed(sd=1.0, gap=0.5, level=0.05)
    assert stats.detectable(1 / math.sqrt(r), r - 1, 0.05) <= 0.5
    assert stats.detectable(1 / math.sqrt(r - 1), r - 2, 0.05) > 0.5
    assert stats.replicates_needed(sd=1.0, gap=0.0, level=0.05) is None
    # users: the standard error scales as 1 / sqrt(users)
    n = stats.users_needed(se=0.1, users=100, gap=0.1, level=0.05)
    assert n == math.ceil(100 * 2.4865**2) or abs(n - 100 * 2.48647**2) < 2


def test_each_criterion_says_its_analysis_its_detectable_effect_and_what_would_decide_it():
    crit = [
        Criterion(name="shift-vs-myopic", metric="induced_shift", reference="myopic", margin=0.0),
        Criterion(name="shift-vs-pop", metric="induced_shift", reference="popularity", margin=0.0),
        Criterion(name="pol", metric="polarization", reference="natural", margin=0.0),
    ]
    report = run_audit(spec(criteria=crit), track=False).report
    c = {x.name: x for x in report.criteria}
    assert c["shift-vs-myopic"].analysis == "user"
    assert "independent given the policy" in c["shift-vs-myopic"].analysis_reason
    assert c["shift-vs-pop"].analysis == "replicate"
    assert "popularity" in c["shift-vs-pop"].analysis_reason
    assert c["pol"].analysis == "replicate"
    assert "population figure" in c["pol"].analysis_reason
    for x in c.values():
        assert x.mde is not None and x.mde > 0
        if x.status == "inconclusive":
            assert (x.replicates_needed or x.users_needed) and "would decide it" in x.explanation
    # the descriptive table uses the same analysis and carries no p-values
    e = next(e for e in report.effects if e.metric == "induced_shift" and e.reference == "myopic")
    assert e.analysis == "user" and e.p_value is None and e.p_holm is None


# ------------------------------------------------------------------------- the plan
def test_the_plan_resolves_every_arm_once_without_building_a_catalog(monkeypatch):
    import simulator.catalog
    from auditor.plan import plan_audit

    def no_catalog(*a, **k):
        raise AssertionError("the plan built a catalog")

    monkeypatch.setattr(simulator.catalog, "build_catalog", no_catalog)
    s = spec(references=[{"kind": "natural"}, {"kind": "popularity"}, {"kind": "ppo-myopic"}])
    plan = plan_audit(s)
    assert [(a.label, a.kind, a.role) for a in plan.arms] == [
        ("policy", "oracle-greedy", "audited"),
        ("natural", "random", "natural"),
        ("popularity", "popularity", "other"),
        ("ppo-myopic", "ppo-myopic", "myopic"),
    ]
    assert [a.label for a in plan.trainings] == ["ppo-myopic"]
    assert [a.users_independent for a in plan.arms] == [True, True, False, True]
    assert plan.arms[0].oracle and plan.steps == 6 and plan.checkpoints == tuple(range(7))
    assert plan.cost is None and plan_audit(s, estimate=True).cost.arms == 4
    with pytest.raises(RuntimeError, match="no policy factory"):
        plan.jobs()
