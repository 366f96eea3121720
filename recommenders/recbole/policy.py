"""RecBole models as simulator policies: :class:`RecBolePolicy` shows each simulated user
the top-k catalog items by the model's scores, logs clicks as interactions and retrains
every ``R`` steps on the accumulated log (the feedback loop of Chaney, Stewart and
Engelhardt, RecSys 2018).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from simulator.errors import SpecError
from simulator.policy import SCORE_BLOCK, PolicyContext
from simulator.types import Feedback, Observation

from .atomic import write_atomic_files
from .fence import _model_kind, _torch_threads
from .training import TrainedModel, train_model


class RecBolePolicy:
    """A RecBole model in the simulation loop, retrained every ``retrain_every`` steps.

    - **Acting.** General models (BPR) score every catalog item for each user with
      ``full_sort_predict``; sequential models (GRU4Rec, SASRec) score from the user's
      last ``MAX_ITEM_LIST_LENGTH`` clicks, so they react to new clicks between retrains
      while a general model sees them only after retraining. The top ``k`` items are
      shown, best first. Nothing is excluded: items the user already clicked can be
      shown again (the simulator allows repeat consumption).
    - **Cold start.** Users the model cannot score (a general model: not in the last
      training log; a sequential model: no clicks yet), and everyone before the first
      training, get the most-clicked items of the log, ties broken by a random item
      order fixed at reset (as the ``popularity`` baseline does).
    - **Feedback loop.** Clicks are logged as (user, item, step) interactions, the
      catalog topics as item genres; every ``retrain_every`` steps the model is trained
      from scratch (``epochs`` epochs) on the whole log so far, never evaluated. With
      ``warm_start`` (the default for sequential models) only the first training starts
      from scratch; later ones continue from the current weights for ``warm_epochs``
      epochs on the new interactions: the users who clicked since the last training,
      each with their last ``2 * retrain_every`` clicks (the new ones and as many before
      them as context). An
      ``initial_log`` (columns ``user``, ``item`` as simulator indices, ``timestamp``
      before step 0) warm-starts the log and trains the first model at reset.
    - **Randomness.** Training seeds and the tie-break order come from the policy's
      stream (``PolicyContext.generator``); RecBole's global seeding is fenced off, so a
      run is reproducible from its seed.

    ``train_seconds`` lists the wall-clock seconds of each retraining.
    """

    oracle = False

    def __init__(
        self,
        model: str = "BPR",
        *,
        retrain_every: int = 5,
        epochs: int = 10,
        extra_config: Mapping[str, Any] | None = None,
        initial_log: pd.DataFrame | None = None,
        threads: int | None = 1,
        name: str | None = None,
        warm_start: bool | None = None,
        warm_epochs: int = 2,
    ) -> None:
        self.kind = _model_kind(model)
        if retrain_every < 1 or epochs < 1 or warm_epochs < 1:
            raise SpecError("retrain_every, epochs and warm_epochs must be positive")
        self.warm_start = self.kind == "sequential" if warm_start is None else bool(warm_start)
        if self.warm_start and self.kind != "sequential":
            raise SpecError("warm_start is for sequential models (GRU4Rec, SASRec)")
        self.warm_epochs = int(warm_epochs)
        self.model_name = model
        self.retrain_every = int(retrain_every)
        self.epochs = int(epochs)
        self.extra_config = {
            "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "mode": "full"},
            **dict(extra_config or {}),
        }
        self.initial_log = initial_log
        self.threads = threads
        self.name = name or f"recbole-{model.lower()}"
        self.trained: TrainedModel | None = None
        self.train_seconds: list[float] = []

    # ------------------------------------------------------------------ protocol
    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        n_items, n_users = ctx.catalog.size, ctx.num_users
        self.base_seed = int(
            torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator, device=ctx.device)
        )
        perm = torch.randperm(n_items, generator=ctx.generator, device=ctx.device).cpu()
        self.tiebreak = torch.empty(n_items, dtype=torch.float64)
        self.tiebreak[perm] = torch.arange(n_items, dtype=torch.float64) / (2 * n_items)
        self.counts = torch.zeros(n_items, dtype=torch.float64)
        self.genres = pd.Series(
            [f"t{int(t)}" for t in ctx.catalog.topic.cpu().tolist()], index=range(n_items)
        )
        self.log_users: list[torch.Tensor] = []
        self.log_items: list[torch.Tensor] = []
        self.log_times: list[torch.Tensor] = []
        self.seq_len = 50  # RecBole's MAX_ITEM_LIST_LENGTH unless set in extra_config
        if "MAX_ITEM_LIST_LENGTH" in self.extra_config:
            self.seq_len = int(self.extra_config["MAX_ITEM_LIST_LENGTH"])
        self.recent = torch.full((n_users, self.seq_len), -1, dtype=torch.long)  # right-aligned
        self.n_recent = torch.zeros(n_users, dtype=torch.long)
        self.trained = None
        self.train_seconds = []
        self.retrains = 0
        self.rows_trained = 0  # log rows at the last training
        self.t_offset = 0.0
        if self.initial_log is not None and len(self.initial_log):
            self._add_initial_log(self.initial_log, n_users, n_items)
            self._retrain()

    def act(self, obs: Observation) -> torch.Tensor:
        k, n = self.ctx.slate_size, obs.num_users
        popular = (self.counts + self.tiebreak).topk(k).indices
        slate = popular[None, :].expand(n, k).clone()
        tm = self.trained
        if tm is not None:
            with _torch_threads(self.threads):
                self._model_slates(tm, slate, n, k)
        return slate.to(self.ctx.device)

    def _model_slates(self, tm: TrainedModel, slate: torch.Tensor, n: int, k: int) -> None:
        """Overwrite the rows of users the model can score with its top-k."""
        if tm.kind == "general":
            ids = self.user_map[:n]
            warm = torch.nonzero(ids > 0).flatten()
            if warm.numel():
                slate[warm] = self._top_k(lambda rows: tm.score_users(ids[rows]), warm, k)
        else:
            warm = torch.nonzero(self.n_recent[:n] > 0).flatten()
            if warm.numel():
                slate[warm] = self._top_k(lambda rows: self._score_seq(tm, rows), warm, k)

    def update(self, feedback: Feedback) -> None:
        item = feedback.item.detach().cpu().long()
        users = torch.nonzero(item >= 0).flatten()
        clicked = item[users]
        ts = torch.full((users.numel(),), self.t_offset + float(feedback.t), dtype=torch.float64)
        self._append(users, clicked, ts)
        if (feedback.t + 1) % self.retrain_every == 0:
            self._retrain()

    # ----------------------------------------------------------------- internals
    def _add_initial_log(self, log: pd.DataFrame, n_users: int, n_items: int) -> None:
        missing = {"user", "item", "timestamp"} - set(log.columns)
        if missing:
            raise SpecError(f"initial_log lacks column(s) {sorted(missing)}")
        users = torch.as_tensor(pd.to_numeric(log["user"]).to_numpy(), dtype=torch.long)
        items = torch.as_tensor(pd.to_numeric(log["item"]).to_numpy(), dtype=torch.long)
        ts = torch.as_tensor(pd.to_numeric(log["timestamp"]).to_numpy(), dtype=torch.float64)
        if users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items:
            raise SpecError("initial_log users/items must be simulator indices in range")
        if not torch.isfinite(ts).all():
            raise SpecError("initial_log timestamps must be finite")
        order = torch.from_numpy(np.lexsort((ts.numpy(), users.numpy())))  # by user, then time
        self._append(users[order], items[order], ts[order], sequential_order=True)
        # run steps come after the initial log
        self.t_offset = float(ts.max()) + 1.0 if float(ts.max()) >= 0 else 0.0

    def _append(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ts: torch.Tensor,
        sequential_order: bool = False,
    ) -> None:
        if not users.numel():
            return
        self.log_users.append(users)
        self.log_items.append(items)
        self.log_times.append(ts)
        self.counts += torch.bincount(items, minlength=self.counts.numel()).double()
        if sequential_order:  # several clicks per user: append one at a time, in order
            for u, i in zip(users.tolist(), items.tolist(), strict=True):
                self.recent[u] = torch.cat([self.recent[u, 1:], torch.tensor([i])])
                self.n_recent[u] = min(self.seq_len, int(self.n_recent[u]) + 1)
        else:  # at most one click per user (one simulator step)
            self.recent[users] = torch.cat([self.recent[users, 1:], items[:, None]], dim=1)
            self.n_recent[users] = (self.n_recent[users] + 1).clamp_max(self.seq_len)

    def _log_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user": torch.cat(self.log_users).numpy(),
                "item": torch.cat(self.log_items).numpy(),
                "timestamp": torch.cat(self.log_times).numpy(),
            }
        )

    def _trainable(self, log: pd.DataFrame) -> bool:
        if not len(log):
            return False
        if self.kind == "general":
            return True
        # a sequential model needs a user with two clicks (a prefix and a next item)
        return bool((log["user"].value_counts() >= 2).any())

    def _new_interactions(self, log: pd.DataFrame) -> pd.DataFrame:
        """The warm start's data: users who clicked since the last training, each with
        their last ``2 * retrain_every`` clicks."""
        active = log["user"].iloc[self.rows_trained :].unique()
        sub = log[log["user"].isin(active)]
        keep = sub.groupby("user").cumcount(ascending=False) < 2 * self.retrain_every
        return sub[keep]

    def _retrain(self) -> None:
        if not self.log_users:
            return
        log = self._log_frame()
        warm = self.warm_start and self.trained is not None
        data = self._new_interactions(log) if warm else log
        if not self._trainable(data):
            return
        seed = (self.base_seed + self.retrains) % (2**31 - 1)
        self.retrains += 1
        self.rows_trained = len(log)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="recaudit-loop-") as tmp:
            write_atomic_files(data, tmp, "loop", item_genres=self.genres)
            tm = train_model(
                self.model_name,
                tmp,
                "loop",
                epochs=self.warm_epochs if warm else self.epochs,
                seed=seed,
                extra_config=self.extra_config,
                threads=self.threads,
                init_from=self.trained if warm else None,
            )
        self.train_seconds.append(time.perf_counter() - start)
        n_items = self.ctx.catalog.size
        self.item_map = tm.item_ids([str(i) for i in range(n_items)])
        if bool((self.item_map == 0).any()):  # pragma: no cover - the .item file lists all
            raise SpecError("RecBole dropped catalog items from its item map")
        self.user_map = tm.user_ids([str(b) for b in range(self.ctx.num_users)])
        if tm.kind == "sequential" and tm.max_seq_length != self.seq_len:
            raise SpecError("MAX_ITEM_LIST_LENGTH changed between reset and training")
        self.trained = tm

    def _score_seq(self, tm: TrainedModel, rows: torch.Tensor) -> torch.Tensor:
        lengths = self.n_recent[rows]
        length = self.seq_len
        # right-aligned buffer -> left-aligned, zero-padded internal ids
        pos = torch.arange(length)[None, :] + (length - lengths)[:, None]
        valid = pos < length
        seq = self.recent[rows].gather(1, pos.clamp_max(length - 1))
        ids = torch.where(valid, self.item_map[seq.clamp_min(0)], torch.zeros_like(seq))
        return tm.score_sequences(ids, lengths)

    def _top_k(self, score: Any, rows: torch.Tensor, k: int) -> torch.Tensor:
        out = torch.empty(rows.numel(), k, dtype=torch.long)
        assert self.trained is not None
        block = max(1, SCORE_BLOCK // max(1, len(self.trained.item_tokens)))
        for start in range(0, rows.numel(), block):
            part = rows[start : start + block]
            scores = score(part)[:, self.item_map]  # internal ids -> catalog order
            out[start : start + block] = scores.topk(k, dim=1).indices
        return out
