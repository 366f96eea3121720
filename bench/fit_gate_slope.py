"""The slope of bounded confidence's gate fit in its true parameters (prints one JSON line).

The fit replaces the hard threshold by a logistic gate and corrects the gate's bias by
simulation (simulator/fitting/debias.py). The corrected estimate's error is the gate's
own error divided by the slope of the gate's expected estimate in the true parameters
(the binding function of indirect inference): where the gate answers a change of the
truth by less than the change, the corrected estimate spreads more than the gate's
interval says. This measures that slope on one log of the validation's setup: the gate's
fit and its bootstrap standard errors, the correction's two steps as the fit runs them
(:func:`simulator.fitting.debias.gate_bias` itself, its simulated refits recorded),
then, at the correction's last point, one forward difference per parameter, ``--mult`` of the gate's standard errors long on the
unconstrained scale, each a refit to choices simulated with the same seed from the same
initial preferences (common random numbers).

    python bench/fit_gate_slope.py --seed 6000 --mult 3

A slope of 1 on the diagonal and 0 off it is a gate that follows the truth one for one;
``slope_in_se`` gives it in standard-error units (row: estimate, column: parameter moved).
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
from simulator.fitting import debias  # noqa: E402
from simulator.fitting.families import FAMILIES  # noqa: E402
from simulator.fitting.fit import Evaluator, maximize  # noqa: E402
from simulator.fitting.recovery import recovery_spec, simulate_log  # noqa: E402
from simulator.fitting.uncertainty import analyse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=6000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--mult", type=float, default=3.0, help="step, in standard errors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    fam = FAMILIES["bounded_confidence"]
    spec = recovery_spec("bounded_confidence")
    log, items, choice = simulate_log(spec, UniformRandom(), args.users, args.steps, args.seed)
    ev = Evaluator(fam, log, items, choice, seed=args.seed)
    analysed, boot = analyse(ev, maximize(ev), 200, args.seed)
    est = ev.profile.best
    assert est is not None and all(r.located for r in analysed), "the gate's maximum"
    raw_boot = np.array(
        [
            [float(q.to_raw(torch.tensor(v))) for q, v in zip(fam.params, row, strict=True)]
            for row in boot
        ]
    )
    se = raw_boot.std(axis=0, ddof=1)
    calls = []  # every simulated refit of the correction: (at, seed, u0, its estimate)

    def simulated_fit(ev_, best, at, s, u0):
        got = refit_of(ev_, best, at, s, u0)
        calls.append((at, s, u0, got))
        return got

    refit_of = debias._simulated_fit
    debias._simulated_fit = simulated_fit
    correction = debias.gate_bias(ev, est)  # its steps, as the fit runs them
    debias._simulated_fit = refit_of
    if correction is None:
        raise SystemExit("the correction's simulated refits were not located")
    done = calls[-debias.STEPS :]  # the attempt whose refits were all located
    steps = [{"at": list(at), "fitted": list(got.raw)} for at, _, _, got in done]
    at, s, u0, got = done[-1]
    last_at, last_fit = np.array(at), np.array(got.raw)
    slope = np.zeros((len(se), len(se)))
    for i in range(len(se)):
        moved = last_at.copy()
        moved[i] += args.mult * se[i]
        # the same simulated seed and initial preferences (common random numbers)
        probe = refit_of(ev, est, tuple(float(a) for a in moved), s, u0)
        if probe is None:
            raise SystemExit(f"the simulated refit at {moved.tolist()} was not located")
        slope[:, i] = (np.array(probe.raw) - last_fit) / (args.mult * se[i])
    print(
        json.dumps(
            {
                "benchmark": "fit_gate_slope",
                "seed": args.seed,
                "users": args.users,
                "steps": args.steps,
                "mult": args.mult,
                "sim": s,
                "attempt": correction.attempt,
                "params": [q.name for q in fam.params],
                "gate_estimate": est.theta,
                "gate_se_unconstrained": se.tolist(),
                "correction_steps": steps,
                "slope": slope.tolist(),
                "slope_in_se": (slope * se[None, :] / se[:, None]).tolist(),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
