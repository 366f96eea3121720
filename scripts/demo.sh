#!/usr/bin/env bash
# The main job on embedded defaults: a click-maximizing oracle policy and a popularity
# policy, each against the natural counterfactual, on embedded Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(date +%Y%m%d-%H%M%S)
out="runs/demo-$stamp"
mkdir -p "$out"
for policy in oracle-greedy popularity; do
  echo "== recaudit simulate --scenario polarity-1d-v1 --policy $policy --seeds 3 --ray --out $out/$policy"
  .venv/bin/recaudit simulate --scenario polarity-1d-v1 --policy "$policy" --seeds 3 --ray --out "$out/$policy"
  echo
done
cat <<MSG
What this shows: on polarity-1d-v1 extreme content is more clickable. Compare each policy's
'induced shift vs natural' and 'polarization at end' with the natural column: both
recommenders move their users' preferences beyond the drift that random exposure causes.

Where to look next:
  $out/<policy>/result.json       the figures above, per seed, with versions and fingerprint
  $out/<policy>/summary.parquet   per-step engagement, shift, induced shift, polarization
  $out/<policy>/per_user.parquet  per-user clicks, shift and polarity
  .venv/bin/recaudit scenarios    other scenarios;  .venv/bin/recaudit simulate --help
MSG
