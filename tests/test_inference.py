"""The verdict's statistics: per-statistic random streams, verdict integrity, the
analysis that fits the design."""

from __future__ import annotations

from auditor import stats
from auditor.audit import run_audit
from auditor.spec import AuditSpec

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
