"""Event tensors from an interaction log.

An :class:`EventLog` holds, per user and event (padded to the longest user), the items
shown and the slot chosen (-1: no click, the outside option). Simulator runs log real
exposures, including steps without a click. Real logs hold only consumptions; their
slates come from a stated logging-policy proxy (see :func:`from_interactions`) and every
event is a click, so the likelihood is then conditional on a click (no outside option).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from ..errors import SpecError

#: proxies for the exposures of a log that does not record them
PROXIES = {
    "popularity": (
        "each logged consumption is treated as a choice from a slate of the consumed item "
        "plus the k-1 items most consumed before it (all users pooled; counts refreshed "
        "every {refresh} events); every event is a click, so the likelihood is conditional "
        "on a click (no outside option)"
    ),
    "sampled": (
        "each logged consumption is treated as a choice from a slate of the consumed item "
        "plus k-1 items drawn uniformly from the rest of the catalog (seed {seed}); every "
        "event is a click, so the likelihood is conditional on a click (no outside option)"
    ),
}


@dataclass(frozen=True)
class EventLog:
    """slates [U, T, k] item indices; chosen [U, T] slot or -1; mask [U, T] valid events."""

    slates: torch.Tensor
    chosen: torch.Tensor
    mask: torch.Tensor
    user_ids: tuple[str, ...]
    outside_option: bool
    exposures: str  # "logged" or the proxy's statement
    #: tensors derived from this log and a catalog, kept across likelihood evaluations
    #: (see :func:`simulator.fitting.likelihood.prepared`); never copied by ``replace``
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def users(self) -> int:
        return int(self.slates.shape[0])

    @property
    def events(self) -> int:
        return int(self.mask.sum())

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def subset(self, rows: torch.Tensor) -> EventLog:
        """These users (rows may repeat: a bootstrap sample). The tensors cached on this
        log are carried, their rows taken (each cached value is an (owner, value) pair
        whose value has a ``rows`` method): a fit that evaluates ever fewer users does
        not compute them again at each evaluation."""
        ids = tuple(self.user_ids[int(i)] for i in rows)
        sub = replace(
            self,
            slates=self.slates[rows],
            chosen=self.chosen[rows],
            mask=self.mask[rows],
            user_ids=ids,
        )
        for key, (owner, value) in self.cache.items():
            sub.cache[key] = (owner, value.rows(rows))
        return sub

    def consumed(self) -> torch.Tensor:
        """[U, T] consumed item index or -1."""
        rows = self.slates.gather(2, self.chosen.clamp_min(0)[..., None])[..., 0]
        return torch.where((self.chosen >= 0) & self.mask, rows, torch.full_like(rows, -1))


def from_run(slates: list[torch.Tensor], choices: list[torch.Tensor]) -> EventLog:
    """An event log from a simulator arm recorded with ``record_full`` (T tensors of
    [B, k] slates and [B] chosen items or -1): exposures logged, no-clicks included."""
    s = torch.stack(slates, dim=1).long()  # [B, T, k]
    items = torch.stack(choices, dim=1).long()  # [B, T]
    hit = s == items[..., None]
    slot = torch.where(hit.any(dim=2), hit.float().argmax(dim=2), torch.full_like(items, -1))
    slot = torch.where(items >= 0, slot, torch.full_like(items, -1))
    return EventLog(
        slates=s,
        chosen=slot,
        mask=torch.ones(items.shape, dtype=torch.bool),
        user_ids=tuple(str(i) for i in range(s.shape[0])),
        outside_option=True,
        exposures="logged",
    )


def from_interactions(
    log: pd.DataFrame,
    item_ids: list[str],
    *,
    proxy: str = "popularity",
    slate_size: int = 10,
    seed: int = 0,
    max_events: int | None = None,
    refresh: int | None = None,
) -> tuple[EventLog, dict[str, int]]:
    """Event tensors from a consumption log under a logging-policy proxy.

    ``log`` has columns user, item (str tokens) and timestamp (float), as
    :func:`simulator.logs.read_log` reads them. Events are ordered by timestamp within
    each user (ties keep file order). Items not in
    the catalog are dropped and counted; ``max_events`` keeps each user's first events.
    Returns the log and counts (events kept, dropped items, users).
    """
    if proxy not in PROXIES:
        raise SpecError(f"unknown exposure proxy {proxy!r}; one of {', '.join(PROXIES)}")
    index = {tok: i for i, tok in enumerate(item_ids)}
    num_items = len(item_ids)
    if slate_size < 1 or slate_size > num_items:
        raise SpecError(f"slate size must be in 1..{num_items}, got {slate_size}")
    item = log["item"].map(index)
    known = item.notna().to_numpy()
    dropped = int((~known).sum())
    df = pd.DataFrame(
        {
            "user": log["user"].to_numpy()[known],
            "item": item.to_numpy()[known].astype(np.int64),
            "timestamp": log["timestamp"].to_numpy()[known],
        }
    )
    if len(df) == 0:
        raise SpecError("no logged item is in the catalog")
    df["order"] = np.arange(len(df))
    df = df.sort_values(["timestamp", "order"], kind="stable").reset_index(drop=True)
    n = len(df)
    items = df["item"].to_numpy()
    others = np.empty((n, slate_size - 1), dtype=np.int64)
    k1 = slate_size - 1
    if proxy == "popularity":
        step = refresh or max(1, n // 1000)
        counts = np.zeros(num_items, dtype=np.int64)
        tie = np.random.default_rng(seed).permutation(num_items)  # fixed tie order
        for start in range(0, n, step):
            stop = min(n, start + step)
            # the k most popular items before this block (one spare for the consumed item)
            key = counts.astype(np.float64) * num_items + (num_items - 1 - tie)
            top = np.argpartition(-key, min(slate_size, num_items - 1))[: slate_size + 1]
            top = top[np.argsort(-key[top], kind="stable")][:slate_size]
            block = items[start:stop]
            for r, it in enumerate(block):
                row = top[top != it][:k1]
                others[start + r] = row
            np.add.at(counts, block, 1)
        statement = PROXIES[proxy].format(refresh=step)
    else:
        rng = np.random.default_rng(seed)
        draw = rng.integers(0, num_items - 1, size=(n, k1 * 2 + 4))
        draw = np.where(draw >= items[:, None], draw + 1, draw)  # never the consumed item
        for r in range(n):
            _, first = np.unique(draw[r], return_index=True)
            row = draw[r][np.sort(first)][:k1]
            while len(row) < k1:  # rare: too many repeats
                extra = rng.integers(0, num_items)
                if extra != items[r] and extra not in row:
                    row = np.append(row, extra)
            others[r] = row
        statement = PROXIES[proxy].format(seed=seed)
    df = df.assign(pos=np.arange(n))
    df = df.sort_values(["user", "timestamp", "order"], kind="stable")
    users, starts, lens = np.unique(df["user"].to_numpy(), return_index=True, return_counts=True)
    if max_events is not None:
        lens = np.minimum(lens, max_events)
    tmax = int(lens.max())
    num_users = len(users)
    slates = np.zeros((num_users, tmax, slate_size), dtype=np.int64)
    mask = np.zeros((num_users, tmax), dtype=bool)
    pos = df["pos"].to_numpy()
    for u in range(num_users):
        rows = pos[starts[u] : starts[u] + lens[u]]
        slates[u, : lens[u], 0] = items[rows]
        slates[u, : lens[u], 1:] = others[rows]
        mask[u, : lens[u]] = True
    ev = EventLog(
        slates=torch.from_numpy(slates),
        chosen=torch.where(torch.from_numpy(mask), torch.tensor(0), torch.tensor(-1)).long(),
        mask=torch.from_numpy(mask),
        user_ids=tuple(str(u) for u in users),
        outside_option=False,
        exposures=statement,
    )
    return ev, {"events": int(mask.sum()), "dropped_unknown_items": dropped, "users": num_users}
