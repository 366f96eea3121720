"""The fit of a scenario's dynamics as an HTML fragment (self-contained, escaped)."""

from __future__ import annotations

from html import escape
from typing import Any


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{float(x):.{digits}g}"


def scenario_fit(scenario: Any) -> dict[str, Any] | None:
    """The ``fit`` section a scenario carries (None for scenarios whose dynamics are
    assumed, or a scenario named only by id)."""
    fit = getattr(scenario, "fit", None)
    return fit if isinstance(fit, dict) else None


def render_fit(fit: dict[str, Any] | None) -> str:
    """``<h2>`` section: the selected family, each parameter with its interval and
    identifiability, and every candidate's held-out likelihood against static. An
    unfitted scenario says that its dynamics are assumed."""
    if not fit:
        return (
            "<h2>Dynamics fit</h2><p>The scenario's dynamics are assumed, not fitted to data.</p>"
        )
    lo, hi = fit.get("vs_static_interval") or (None, None)
    out = [
        "<h2>Dynamics fit</h2>",
        f"<p>Selected family: <b>{_e(fit.get('family'))}</b>; held-out log-likelihood per "
        f"event against static {_num(fit.get('vs_static'))} [{_num(lo)}, {_num(hi)}] "
        f"(95% bootstrap over users).</p>",
    ]
    params = fit.get("parameters") or []
    if params:
        out.append(
            "<table><thead><tr><th>parameter</th><th>estimate</th><th>95% interval</th>"
            "<th>identifiability</th></tr></thead><tbody>"
        )
        for p in params:
            iv = p.get("interval")
            est = _num(p.get("estimate")) if p.get("estimate") is not None else "not reported"
            shown_iv = f"[{_num(iv[0])}, {_num(iv[1])}]" if iv else "not reported"
            out.append(
                f"<tr><td>{_e(p.get('name'))}</td><td class='num'>{_e(est)}</td>"
                f"<td class='num'>{shown_iv}</td><td>{_e(p.get('status'))}</td></tr>"
            )
        out.append("</tbody></table>")
        notes = [p for p in params if p.get("note")]
        if notes:
            out.append(
                "<ul>"
                + "".join(f"<li>{_e(p.get('name'))}: {_e(p['note'])}</li>" for p in notes)
                + "</ul>"
            )
    cands = fit.get("candidates") or []
    if cands:
        out.append(
            "<table><thead><tr><th>candidate</th><th>held-out log-lik / event</th>"
            "<th>vs static</th><th>95% interval</th></tr></thead><tbody>"
        )
        for c in cands:
            iv = c.get("vs_static_interval") or (None, None)
            out.append(
                f"<tr><td>{_e(c.get('family'))}</td><td class='num'>{_num(c.get('heldout_loglik_per_event'))}</td>"
                f"<td class='num'>{_num(c.get('vs_static'))}</td><td class='num'>[{_num(iv[0])}, {_num(iv[1])}]</td></tr>"
            )
        out.append("</tbody></table>")
    data = fit.get("data") or {}
    out.append(f"<p>Exposures: {_e(data.get('exposures', '—'))}.</p>")
    assumptions = fit.get("assumptions") or []
    if assumptions:
        out.append("<ul>" + "".join(f"<li>{_e(a)}</li>" for a in assumptions) + "</ul>")
    return "\n".join(out)
