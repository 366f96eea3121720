"""The fit of an interaction log against a catalog, end to end.

One path for ``recaudit fit`` and for a derivation's fit step (``POST /v1/datasets`` with
``fit``): the log (columns user, item, timestamp, as :func:`simulator.logs.read_log`
reads it) becomes event tensors under a logging-policy proxy
(:func:`~simulator.fitting.log.from_interactions`), the candidates are fitted and one is
selected (:func:`~simulator.fitting.select.fit_log`), and, if asked, the selected
family is refitted under the other proxy (:func:`~simulator.fitting.select.proxy_sensitivity`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import SpecError
from .families import DEFAULT_CANDIDATES, FAMILIES
from .likelihood import ChoiceForm, Items
from .log import PROXIES, from_interactions
from .report import FitSection


@dataclass(frozen=True)
class FitOptions:
    """What shapes a fit besides the log and the catalog (``recaudit fit``'s flags)."""

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    proxy: str = "popularity"
    slate_size: int = 10
    max_events: int = 200
    replicates: int = 200
    seed: int = 0
    sensitivity: bool = False
    #: processes the fit runs in (select.fit_pool; the section is the same, to rounding)
    workers: int = 1

    def __post_init__(self) -> None:
        unknown = [c for c in self.candidates if c not in FAMILIES]
        if unknown:
            raise SpecError(f"unknown family {unknown[0]!r}; one of {', '.join(FAMILIES)}")
        if not self.candidates:
            raise SpecError("give at least one candidate family")
        if self.proxy not in PROXIES:
            raise SpecError(f"unknown exposure proxy {self.proxy!r}; one of {', '.join(PROXIES)}")
        if min(self.slate_size, self.max_events, self.replicates, self.workers) < 1:
            raise SpecError("slate size, max events, replicates and workers must be positive")

    @property
    def families(self) -> tuple[str, ...]:
        """The families fitted: static (the baseline) and every candidate, once each."""
        return ("static", *dict.fromkeys(c for c in self.candidates if c != "static"))


def parse_candidates(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``static,trecs`` (or a list) -> ("static", "trecs"); None -> every default family."""
    if text is None:
        return tuple(DEFAULT_CANDIDATES)
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(str(c).strip() for c in parts if str(c).strip())


def fit_interactions(
    log: pd.DataFrame,
    item_ids: Sequence[str],
    items: Items,
    choice: Any,
    options: FitOptions,
    *,
    data: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FitSection:
    """Fit and select the dynamics of ``log`` against the catalog (``item_ids`` in the
    order of ``items``' rows) under the scenario's choice model ``choice`` (MNL); the
    fit section, its ``data`` holding ``data`` and the log's counts."""
    from .select import fit_log, proxy_sensitivity, with_proxy_notes

    events, counts = from_interactions(
        log,
        list(item_ids),
        proxy=options.proxy,
        slate_size=options.slate_size,
        seed=options.seed,
        max_events=options.max_events,
    )
    section, _ = fit_log(
        events,
        items,
        ChoiceForm.of(choice, events),
        candidates=options.families,
        seed=options.seed,
        replicates=options.replicates,
        data={
            **(data or {}),
            "proxy": options.proxy,
            "max_events_per_user": options.max_events,
            **counts,
        },
        progress=progress,
        workers=options.workers,
    )
    if options.sensitivity and section.family != "static":
        other = "sampled" if options.proxy == "popularity" else "popularity"
        alt, _ = from_interactions(
            log,
            list(item_ids),
            proxy=other,
            slate_size=options.slate_size,
            seed=options.seed,
            max_events=options.max_events,
        )
        if progress:
            progress(f"proxy sensitivity: refitting {section.family} under the {other} proxy")
        sens = proxy_sensitivity(
            section, alt, items, ChoiceForm.of(choice, alt), other, options.seed
        )
        section = with_proxy_notes(section, sens).model_copy(update={"proxy_sensitivity": sens})
    return section
