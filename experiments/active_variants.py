"""Which question to ask a new user next: the shipped criterion (variance reduction) against expected
accuracy, alone and after the first answers, at the fitted posterior and at a narrower one.

    python -m experiments.active_variants              # the shipped model, ~15 minutes on 2 CPU cores
    python -m experiments.active_variants --select     # the settings chosen on validation users (~20 minutes)

Feeds docs/decisions/active.md (issue 27: active-question gain at N = 10 >= +3 points). Each policy asks,
one at a time, a comparison from the user's pool (oriented as the user answers), refits with the runtime's
``fit_map`` at the model's prior strength, and is scored on the user's held-out comparisons after N answers,
next to the same pool asked in random order:

- ``variance``: ``moerm_lite.active.variance_reduction``, what ``RewardModel.next_comparison`` asked by until
  2026-12-06 (it now asks by the ``--select`` choice);
- ``accuracy``: the comparison after whose answer (one Newton step of the posterior) the pool's comparisons
  are expected to be ordered right most often (``moerm_lite.active.expected_accuracy``);
- ``variance, then accuracy``: the first for the first 3 answers, the second after;
- ``... , narrower``: the same, the question chosen under the posterior of a prior 3x stronger (the
  fit that is scored stays at the model's prior).

Groups: persona-16 users (the card's test users, 200, pool of 200 comparisons; and 100 validation users,
seed 777), then users of other kinds, family-out for a choice made on persona users: attribute users (1 and
2-3 attributes) and users of the five taste families, each asked from its own 50 adaptation comparisons
(in the benchmark's random order for ``random``). Needs the export extra and ../shared/data.

``--select``: the two settings of ``variance, then accuracy`` (answers asked by variance first: 3, 5 or all;
selection prior 1, 3 or 10 times the model's) chosen by the mean gain at N = 10 over validation users of
eight groups (persona seed 777; 1 and 2-3 attributes; the five taste families), then the choice, the shipped
criterion and random questions on fresh users of every group (persona: the card's test users).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import ResponsePool, attribute_benchmark
from moerm_build.data.tastes import TASTE_FAMILIES, taste_benchmark, taste_pool
from moerm_build.evaluate.metrics import RuntimeFeaturizer, pair_accuracy
from moerm_build.evaluate.real_eval import attribute_pool
from moerm_lite import fit_map
from moerm_lite.active import expected_accuracy, prior_covariance, variance_reduction
from moerm_lite.head import expert_features
from moerm_lite.model import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
SWITCH = 3  # answers asked by variance before expected accuracy
NARROWER = 3.0  # the narrower selection posterior's prior strength, times the model's
SHOWN = (1, 2, 3, 5, 10, 15, 20)
Criterion = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]  # (pool, w, cov, answers) -> (Q,)


def switch_policy(switch: int) -> Criterion:
    """Variance reduction for the first ``switch`` answers, expected accuracy after."""
    def criterion(pool: np.ndarray, w: np.ndarray, cov: np.ndarray, n: int) -> np.ndarray:
        return variance_reduction(pool, w, cov) if n < switch else expected_accuracy(pool, w, cov)

    return criterion


GRID = {f"variance {s if s < 99 else 'always'}, prior x{f:g}": (switch_policy(s), f)
        for s in (3, 5, 99) for f in (1.0, 3.0, 10.0)}  # "variance always, prior x1": the shipped criterion


def policies() -> dict[str, tuple[Criterion, float]]:
    """name -> (criterion, selection prior strength as a multiple of the model's)."""
    def variance(pool: np.ndarray, w: np.ndarray, cov: np.ndarray, n: int) -> np.ndarray:
        return variance_reduction(pool, w, cov)

    def accuracy(pool: np.ndarray, w: np.ndarray, cov: np.ndarray, n: int) -> np.ndarray:
        return expected_accuracy(pool, w, cov)

    def hybrid(pool: np.ndarray, w: np.ndarray, cov: np.ndarray, n: int) -> np.ndarray:
        return variance(pool, w, cov, n) if n < SWITCH else accuracy(pool, w, cov, n)

    return {"variance (shipped)": (variance, 1.0), "accuracy": (accuracy, 1.0),
            "variance, then accuracy": (hybrid, 1.0), "variance, narrower": (variance, NARROWER),
            "accuracy, narrower": (accuracy, NARROWER), "variance, then accuracy, narrower": (hybrid, NARROWER)}


def asked_curve(pool: np.ndarray, test: np.ndarray, w0: np.ndarray, lam: float, P: np.ndarray | None,
                criterion: Criterion | None, select_lam: float, rounds: int = 20) -> np.ndarray:
    """(rounds,) held-out accuracy after each answer; ``criterion`` None: the pool in its own order."""
    asked: list[int] = []
    w, cov = w0.copy(), prior_covariance(select_lam, P, len(w0))
    out = np.zeros(rounds)
    for n in range(rounds):
        if criterion is None:
            asked.append(n)
        else:
            g = np.asarray(criterion(pool, w, cov, n), dtype=np.float64)
            g[asked] = -np.inf
            asked.append(int(np.argmax(g)))
            w, cov = fit_map(pool[asked], w0, select_lam, P)
        out[n] = pair_accuracy(test @ fit_map(pool[asked], w0, lam, P)[0])
    return out


def table(title: str, users: list[tuple[np.ndarray, np.ndarray]], w0: np.ndarray, lam: float,
          P: np.ndarray | None, names: list[str], pol: dict[str, tuple[Criterion, float]] | None = None
          ) -> dict[str, float]:
    """Print the mean curve of each policy (of ``pol``, default :func:`policies`) and its gain over random at
    N = 10 (± standard error); return the gains."""
    pol = policies() if pol is None else pol
    acc = {name: np.array([asked_curve(pool, test, w0, lam, P, *((None, lam) if name == "random" else
                                                                  (pol[name][0], lam * pol[name][1])))
                           for pool, test in users]) for name in ["random", *names]}
    print(f"\n{title} ({len(users)} users)\n{'':36}" + "".join(f"{'N=' + str(n):>7}" for n in SHOWN)
          + "   gain at N=10")
    gains = {}
    for name, a in acc.items():
        d = 100 * (a[:, 9] - acc["random"][:, 9])
        gains[name] = float(d.mean())
        print(f"  {name:34}" + "".join(f"{100 * a[:, n - 1].mean():7.1f}" for n in SHOWN)
              + (f"   {d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f}" if name != "random" else ""),
              flush=True)
    return gains


def persona_users(phi: np.ndarray, st: data.Statements, n_users: int, user_seed: int, pool_size: int = 200,
                  seed: int = 2024) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pool (200, K), held-out (100, K)) per user, the pools drawn as the card's active curve draws them,
    in a random order."""
    rng = np.random.default_rng(seed)
    adapt = data.statement_split(st, "adapt")
    out = []
    for u in data.persona_benchmark(st, n_users=n_users, seed=user_seed):
        pool = np.array(data.sample_comparisons(rng, u.w, st, adapt, pool_size))  # (Q, 2)
        e = np.array(u.eval)
        out.append(((phi[pool[:, 0]] - phi[pool[:, 1]])[rng.permutation(pool_size)], phi[e[:, 0]] - phi[e[:, 1]]))
    return out


def pool_users(phi: np.ndarray, users: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """(adaptation comparisons (50, K), held-out comparisons (E, K)) per benchmark user."""
    return [(phi[a[:, 0]] - phi[a[:, 1]], phi[e[:, 0]] - phi[e[:, 1]])
            for a, e in ((np.array(u.adapt), np.array(u.eval)) for u in users)]


def groups(phi_st: np.ndarray, st: data.Statements, phi: np.ndarray, pool: ResponsePool, fresh: bool
           ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The eight groups of ``--select``: validation users (``fresh`` False) or fresh ones."""
    tp, shift = taste_pool(pool), 100 if fresh else 0
    one = attribute_benchmark(pool, n_users=100, n_attributes=1, seed=778 + shift)
    out = {"persona": persona_users(phi_st, st, 200, 12345) if fresh else persona_users(phi_st, st, 100, 777),
           "1 attribute": pool_users(phi, one),
           "2-3 attributes": pool_users(phi, attribute_benchmark(pool, n_users=100, seed=779 + shift))}
    for i, fam in enumerate(TASTE_FAMILIES):
        users = taste_benchmark(tp, fam, n_users=100, seed=8642 + i + 10 * shift)
        out[f"taste family: {fam}"] = pool_users(phi, users)
    return out


def select(fz: RuntimeFeaturizer, phi_st: np.ndarray, st: data.Statements) -> None:
    """``--select``: the grid on validation users, then the choice and the shipped criterion on fresh ones."""
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    ap_ = attribute_pool(fz, with_probe=False)
    gains: dict[str, list[float]] = {name: [] for name in GRID}
    for title, users in groups(phi_st, st, ap_["phi"], ap_["pool"], fresh=False).items():
        for name, g in table(f"{title}, validation users", users, w0, lam, P, list(GRID), GRID).items():
            if name != "random":
                gains[name].append(g)
    mean = {name: float(np.mean(g)) for name, g in gains.items()}
    print("\nmean gain at N = 10 over the eight validation groups:")
    for name, g in sorted(mean.items(), key=lambda kv: -kv[1]):
        print(f"  {name:34} {g:+.2f}")
    best = max(mean, key=lambda name: mean[name])
    shipped = "variance always, prior x1"
    print(f"\nchosen: {best}; on fresh users of every group, next to the shipped criterion:")
    pol = {name: GRID[name] for name in dict.fromkeys([shipped, best])}
    for title, users in groups(phi_st, st, ap_["phi"], ap_["pool"], fresh=True).items():
        table(f"{title}, fresh users", users, w0, lam, P, list(pol), pol)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    ap.add_argument("--select", action="store_true", help="choose the settings on validation users")
    args = ap.parse_args()
    fz = RuntimeFeaturizer(args.model)
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    names = list(policies())
    st = data.load_persona()
    phi_st = expert_features(*fz.outputs([("", s) for s in st.text]))  # (S, K)
    print(f"{Path(args.model).name} (int8 runtime), prior strength {lam:g}; held-out accuracy (%) after N answers")
    if args.select:
        select(fz, phi_st, st)
        return
    table("persona, the card's test users", persona_users(phi_st, st, 200, 12345), w0, lam, P, names)
    table("persona, validation users", persona_users(phi_st, st, 100, 777), w0, lam, P, names)
    ap_ = attribute_pool(fz, with_probe=False)
    pool, phi = ap_["pool"], ap_["phi"]
    table("1 attribute", pool_users(phi, attribute_benchmark(pool, n_users=100, n_attributes=1, seed=778)),
          w0, lam, P, names)
    table("2-3 attributes", pool_users(phi, attribute_benchmark(pool, n_users=100, seed=779)), w0, lam, P, names)
    tp = taste_pool(pool)
    for i, fam in enumerate(TASTE_FAMILIES):
        table(f"taste family: {fam}", pool_users(phi, taste_benchmark(tp, fam, n_users=100, seed=8642 + i)),
              w0, lam, P, names)


if __name__ == "__main__":
    main()
