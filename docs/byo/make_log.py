"""A stand-in for a team's export: who clicked which article when, and the articles."""

import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
n_users, n_items = 600, 240
lean = rng.choice(["left", "right", "centre"], n_items, p=[0.4, 0.4, 0.2])
side = {"left": -1.0, "right": 1.0, "centre": 0.0}
items = pd.DataFrame({"item_id": [f"art-{i:04d}" for i in range(n_items)], "category": lean})
taste = rng.normal(0, 1, n_users)
rows = []
for u in range(n_users):
    pos = np.array([side[c] for c in lean])
    p = np.exp(1.5 * taste[u] * pos + rng.normal(0, 1, n_items))
    picks = rng.choice(n_items, size=rng.integers(10, 40), replace=False, p=p / p.sum())
    t0 = 1_700_000_000 + rng.integers(0, 86_400 * 30, len(picks))
    rows += [(f"acct-{u:05d}", f"art-{i:04d}", int(t)) for i, t in zip(picks, t0, strict=True)]
log = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).sort_values("timestamp")
log.to_csv("shop/log.csv", index=False)
items.to_csv("shop/items.csv", index=False)
print(f"{len(log)} interactions, {log.user_id.nunique()} users, {log.item_id.nunique()} items")
