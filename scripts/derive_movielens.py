"""Derive the movielens-100k-v1 scenario data from RecBole's bundled MovieLens 100k.

    python scripts/derive_movielens.py [--out simulator/data/movielens-100k-v1]

One output of the generic derivation (``recaudit scenario derive``, see
``recommenders/derive.py``): BPR (16 dimensions, seed 2020, 40 epochs, Adam lr 0.005; about
15 s on one core) on RecBole's default 80/10/10 split, then

- items.parquet: unit-norm item embeddings f0..f15, item_id (MovieLens movie id), genre
  (the movie's first genre), topic (its index in the sorted list of first genres),
  appeal = quality = 0, one row per movie in increasing id;
- users.parquet: unit-norm user embeddings f0..f15 and user_id, one row per user in
  increasing id.

Deterministic: the same RecBole/torch versions give the same files. Nothing is downloaded.
Prints the derivation's provenance (RecBole's test metrics, the calibration the generic
derivation would use; the published preset keeps its own choice model and dynamics).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recommenders.derive import MOVIELENS_DIR, derive_movielens
from simulator.io import DATA_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR / MOVIELENS_DIR)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    summary = derive_movielens(args.out, epochs=args.epochs, seed=args.seed)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
