"""A user bootstrap of bounded confidence's whole gate correction (prints one JSON line).

The corrected estimate is the gate's fit to the log less the bias the gate showed on
choices simulated from the hard threshold (simulator/fitting/debias.py); its interval is
the gate's widened by sqrt(2), for the simulated refit's own noise. Each simulated user
starts from a draw of the same log user's posterior and sees that user's slates, so the
log's and the simulated logs' per-user likelihood contributions pair up by user. This
fits one log of the validation's setup as ``--no-selection`` does, keeps the final
stencil of the log's fit and of each simulated refit, and resamples users jointly across
them (200 replicates, the fit's seed): the spread of the corrected replicates against
sqrt(2) times the gate's says whether the widening counts what a user bootstrap of the
whole correction sees (``ratio_to_sqrt2_sdx``; 1 where it does), and ``corr_x_f2``
whether a log's own users move the correction with its estimate. The last simulated
refit's point is held fixed (its slope was measured near 1 by bench/fit_gate_slope.py).

    python bench/fit_gate_paired.py 6019

Unconstrained scale throughout (``best_raw``, ``at``, ``fits``, standard deviations).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recommenders.baselines import UniformRandom  # noqa: E402
from simulator.fitting import debias, uncertainty  # noqa: E402
from simulator.fitting.families import FAMILIES  # noqa: E402
from simulator.fitting.fit import Evaluator, maximize  # noqa: E402
from simulator.fitting.recovery import recovery_spec, simulate_log  # noqa: E402

#: every stencil evaluated: (evaluator id, centre, frame, grid, pinv, what it returned)
CALLS: list[tuple] = []


def _recorded_stencil(ev, center, frame, grid, pinv):
    out = _STENCIL(ev, center, frame, grid, pinv)
    CALLS.append((id(ev), center.copy(), frame.copy(), grid, pinv, out))
    return out


def final_stencil(evid: int) -> tuple:
    """The stencil an evaluator's analysis ended on: its last, unless that one (the second,
    along the covariance's axes) was not kept because its maximum left it."""
    mine = [c for c in CALLS if c[0] == evid]
    last = mine[-1]
    if last[5][2] is not None and not last[5][3]:
        return last
    return mine[-2]


_STENCIL = uncertainty._stencil
_SIMULATED_FIT = debias._simulated_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seed = args.seed
    t0 = time.time()
    sims = []

    def simulated_fit(ev_, best, at, s, u0):
        got = _SIMULATED_FIT(ev_, best, at, s, u0)
        if got is not None:  # its evaluator's stencils were the last evaluated
            sims.append((at, got.raw, final_stencil(CALLS[-1][0])))
        return got

    uncertainty._stencil = _recorded_stencil
    debias._simulated_fit = simulated_fit
    fam = FAMILIES["bounded_confidence"]
    log, items, choice = simulate_log(
        recovery_spec("bounded_confidence"), UniformRandom(), args.users, args.steps, seed
    )
    ev = Evaluator(fam, log, items, choice, seed=seed)
    results, _, corr = debias.analyse_fit(ev, maximize(ev), 200, seed)
    if corr is None:
        raise SystemExit("the correction's simulated refits were not located: no correction")
    sims = sims[-debias.STEPS :]  # the attempt whose refits were all located
    data = final_stencil(id(ev))
    best = np.array(ev.profile.best.raw)
    rng = np.random.default_rng(seed)
    users = data[5][0].shape[0]
    reps = {"x": [], "f1": [], "f2": []}
    for _ in range(200):
        c = np.bincount(rng.integers(0, users, users), minlength=users)
        for key, st in (("x", data), ("f1", sims[0][2]), ("f2", sims[1][2])):
            _, center, frame, grid, pinv, out = st
            est, _, _ = uncertainty._quad_estimate(c @ out[0], center, frame, grid, pinv)
            reps[key].append(est)
    x, f1, f2 = (np.array(reps[k]) for k in ("x", "f1", "f2"))
    at2 = np.array(sims[1][0])
    corrected = x - (f2 - at2)
    sd_x = x.std(0, ddof=1)
    out = {
        "benchmark": "fit_gate_paired",
        "seed": seed,
        "estimates": [r.estimate for r in results],
        "uncorrected": [r.uncorrected for r in results],
        "best_raw": best.tolist(),
        "at": [list(s[0]) for s in sims],
        "fits": [list(s[1]) for s in sims],
        "sd_x": sd_x.tolist(),
        "sd_f1": f1.std(0, ddof=1).tolist(),
        "sd_f2": f2.std(0, ddof=1).tolist(),
        "corr_x_f2": [float(np.corrcoef(x[:, i], f2[:, i])[0, 1]) for i in range(x.shape[1])],
        "sd_corrected": corrected.std(0, ddof=1).tolist(),
        "ratio_to_sqrt2_sdx": (corrected.std(0, ddof=1) / (np.sqrt(2) * sd_x)).tolist(),
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
