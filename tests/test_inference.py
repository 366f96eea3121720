"""The verdict's statistics: per-statistic random streams, verdict integrity, the
analysis that fits the design."""

from __future__ import annotations

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
