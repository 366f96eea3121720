#!/usr/bin/env bash
# The main job on embedded defaults: audit a long-horizon click optimizer (PPO, discount
# 0.99) on polarity-1d-v1 against the natural counterfactual, the same learner with
# discount 0 (myopic) and a distance-penalized learner, every (policy, replicate) as a
# task on embedded Ray, tracked in MLflow (SQLite in RECAUDIT_HOME, default ~/.recaudit).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(date +%Y%m%d-%H%M%S)
out="runs/demo-$stamp"
train="users=1024,iterations=40"
cmd=(.venv/bin/recaudit audit --scenario polarity-1d-v1
  --policy "ppo[$train]"
  --references "natural,ppo-myopic[$train],ppo-distance[$train,penalty_weight=2]"
  --users 2000 --replicates 8 --out "$out")
echo "== ${cmd[*]}"
echo "   (the first run trains the three learners once, about 2 minutes; later runs reuse them)"
status=0
"${cmd[@]}" || status=$?
case $status in
  0|1|3) ;;  # pass, flag, inconclusive: all are answers
  *) echo "the audit failed (exit status $status)" >&2; exit "$status" ;;
esac
cat <<MSG

Exit status $status (0 pass, 1 flag, 3 inconclusive; a release gate reads it).

What this shows: on polarity-1d-v1 extreme content is more clickable, so a click optimizer
gains by moving its users. The table compares the audited learner with the natural drift,
the myopic learner and the penalized one; the criteria test the paired effects.

Where to look next:
  $out/report.html            the report: distributions over time, curves, effects, verdict
  $out/report.json            the same, machine-readable (schema recaudit.audit-report/v1)
  .venv/bin/recaudit ui       MLflow: the audit's parent run and a child run per arm
  .venv/bin/recaudit history --policy ppo   every audit of ppo over time
  .venv/bin/recaudit audit --help           audit your own policy or spec file
MSG
