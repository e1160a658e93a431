"""Would another way of fitting a new user beat the frozen probe on tastes the experts cannot express?

    python experiments/user_fit_variants.py              # the shipped model, ~12 minutes on 2 CPU cores

Feeds docs/decisions/residual.md (issue 27: never worse than the simple model). Each
user is fitted from N = 5 / 10 / 20 / 50 comparisons and scored on held-out ones, as the card's tables:
the taste families (``moerm_build.data.tastes``; no build trains on them), single- and multi-attribute users (the
tastes the experts were trained on) and the four DSP domain users (evaluation only). Rows:

- ``weights only`` and ``auto (shipped)``: the runtime's own fits (``UserProfile.fit``), the expert
  weights alone and with the residual chosen per user (``residual_strength="auto"``);
- ``auto, population scale``: the same choice, but the residual's penalty scaled by each feature's
  spread over the pool's pairs instead of over the user's own N comparisons;
- ``joint s`` / ``joint auto``: the expert weights and a residual of strength ``s`` fitted in one MAP
  (their two Gaussian priors together, so the residual does not only see what the weights leave), and the
  strength chosen per user by the same approximate leave-one-out;
- ``probe`` and ``probe, spread prior``: the logistic probe on the standardised frozen features (the card's
  reference) and the same probe whose prior favours the directions the pool's pairs vary along (features
  multiplied by the square root of their pair-difference covariance, power 1/2, total variance kept).

Nothing here is shipped; it prints one table per user group. Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import attribute_benchmark
from moerm_build.data.tastes import TASTE_FAMILIES, taste_benchmark, taste_pool
from moerm_build.evaluate.metrics import RuntimeFeaturizer, logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import (PROBE_L2, SHOTS, attribute_pool, dsp_pool, fit_user_terms,
                                           spread_transform)
from moerm_lite.model import DEFAULT_MODEL
from moerm_lite.personalize import RESIDUAL_GRID, loo_log_likelihood, penalized_logistic, residual_scale

ROOT = Path(__file__).resolve().parents[1]
STRENGTHS = (1.0, 3.0, 10.0, 30.0)
Fit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (phi (N, K), X (N, F)) -> (w, v)
Draw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


class Fits:
    """The fits compared, for one model (w0, prior strength lam, prior precision P)."""

    def __init__(self, w0: np.ndarray, lam: float, P: np.ndarray | None, pop_scale: np.ndarray) -> None:
        self.w0, self.lam, self.pop_scale = w0, lam, pop_scale
        self.P = np.eye(len(w0)) if P is None else P  # (K, K)
        self.Linv = np.linalg.inv(np.linalg.cholesky(lam * self.P))  # (K, K): w = w0 + Linv^T c, c ~ N(0, I)

    def runtime(self, strength: "float | str | None") -> Fit:
        return lambda phi, X: fit_user_terms(phi, X, self.w0, self.lam, self.P, strength)

    def residual_on(self, phi: np.ndarray, X: np.ndarray, w: np.ndarray, rho: float,
                    scale: np.ndarray) -> np.ndarray:
        """The residual (F,) of strength rho after the weights w, penalty scaled by ``scale`` (F,)."""
        return penalized_logistic(X / scale, phi @ w, rho) / scale  # (F,)

    def auto_population_scale(self, phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, _ = fit_user_terms(phi, None, self.w0, self.lam, self.P, None)
        best = (loo_log_likelihood(phi, None, w, None, self.lam, self.P, None), np.zeros(X.shape[1]))
        for rho in RESIDUAL_GRID[1:]:
            assert rho is not None
            v = self.residual_on(phi, X, w, rho, self.pop_scale)
            score = loo_log_likelihood(phi, X, w, v, self.lam, self.P, rho, scale=self.pop_scale)
            if score > best[0] + 1e-12:
                best = (score, v)
        return w, best[1]

    def joint(self, rho: float) -> Fit:
        def fit(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s = residual_scale(X)  # (F,)
            A, Z = phi @ self.Linv.T, X / s / np.sqrt(2 * rho)  # (N, K), (N, F): both priors N(0, I) on c
            c = penalized_logistic(np.hstack([A, Z]), phi @ self.w0, 0.5)  # (K + F,): penalty ||c||^2 / 2
            K = len(self.w0)
            return self.w0 + self.Linv.T @ c[:K], c[K:] / np.sqrt(2 * rho) / s
        return fit

    def joint_auto(self, phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, v = fit_user_terms(phi, None, self.w0, self.lam, self.P, None)
        best = (loo_log_likelihood(phi, None, w, None, self.lam, self.P, None), w, np.zeros(X.shape[1]))
        for rho in RESIDUAL_GRID[1:]:
            assert rho is not None
            w, v = self.joint(rho)(phi, X)
            score = loo_log_likelihood(phi, X, w, v, self.lam, self.P, rho)
            if score > best[0] + 1e-12:
                best = (score, w, v)
        return best[1], best[2]

    def table(self) -> dict[str, Fit]:
        return {"weights only": self.runtime(None), "auto (shipped)": self.runtime("auto"),
                "auto, population scale": self.auto_population_scale,
                **{f"joint {s:g}": self.joint(s) for s in STRENGTHS}, "joint auto": self.joint_auto}


def pair_scale(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """(F,) the residual's scale over 20,000 random pairs of the pool's items X (R, F)."""
    i, j = np.random.default_rng(seed).integers(len(X), size=(2, 20_000))
    return residual_scale(X[i] - X[j])


def score_rows(fits: dict[str, Fit], T: np.ndarray, draws: list[Draw]) -> dict[str, list[float]]:
    """Mean held-out accuracy (%) per fit at each N over ``draws`` of (phi_fit, X_fit, Xs_fit, phi_test,
    X_test, Xs_test, n)."""
    acc: dict[str, dict[int, list[float]]] = {}
    for pa, xa, sa, pe, xe, se, n in draws:
        for name, fit in fits.items():
            w, v = fit(pa, xa)
            acc.setdefault(name, {}).setdefault(int(n), []).append(pair_accuracy(pe @ w + xe @ v))
        for name, Tm in (("probe", None), ("probe, spread prior", T)):
            A, E = (sa, se) if Tm is None else (sa @ Tm, se @ Tm)
            acc.setdefault(name, {}).setdefault(int(n), []).append(
                pair_accuracy(E @ logistic_fit(A, np.ones(len(A)), PROBE_L2)))
    return {k: [100 * float(np.mean(d[n])) for n in SHOTS] for k, d in acc.items()}


def print_table(title: str, rows: dict[str, list[float]]) -> None:
    print(f"\n{title}\n{'':26}" + "".join(f"{'N=' + str(n):>8}" for n in SHOTS))
    for name, vals in rows.items():
        print(f"{name:26}" + "".join(f"{v:8.1f}" for v in vals), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    ap.add_argument("--users", type=int, default=100, help="users per group")
    args = ap.parse_args()
    fz = RuntimeFeaturizer(args.model)
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    pool = attribute_pool(fz, with_probe=False)
    phi, X = pool["phi"], pool["X"]  # (R, K), (R, F)
    Xs = (X - X.mean(0)) / (X.std(0) + 1e-6)  # (R, F): the probe's standardised features
    fits, T = Fits(w0, lam, P, pair_scale(X)).table(), spread_transform(Xs)
    groups = {f"taste family: {f}": taste_benchmark(taste_pool(pool["pool"]), f, n_users=args.users)
              for f in TASTE_FAMILIES}
    groups["1 attribute"] = attribute_benchmark(pool["pool"], n_users=args.users, n_attributes=1)
    groups["2-3 attributes"] = attribute_benchmark(pool["pool"], n_users=args.users)
    for title, users in groups.items():
        draws: list[Draw] = []
        for u in users:
            a, e = np.array(u.adapt), np.array(u.eval)
            d = [M[a[:, 0]] - M[a[:, 1]] for M in (phi, X, Xs)] + [M[e[:, 0]] - M[e[:, 1]] for M in (phi, X, Xs)]
            draws += [(d[0][:n], d[1][:n], d[2][:n], d[3], d[4], d[5], n) for n in SHOTS]
        print_table(f"{title} ({len(users)} users)", score_rows(fits, T, draws))

    dphi, dX, first = dsp_pool(fz)  # (I, 5, K), (I, 5, F) standardised, (I,)
    dfits = Fits(w0, lam, P, pair_scale(dX.reshape(-1, dX.shape[-1]))).table()
    dT = spread_transform(dX.reshape(-1, dX.shape[-1]))
    rng, draws = np.random.default_rng(0), []  # draws: list[Draw]
    for u in range(len(data.DSP_DOMAINS)):
        others = [j for j in range(dX.shape[1]) if j != u]

        def diffs(M: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return np.concatenate([M[rows, u] - M[rows, j] for j in others])

        fit_rows, test_rows = np.flatnonzero(first), np.flatnonzero(~first)
        tp, tx, ep, ex = diffs(dphi, fit_rows), diffs(dX, fit_rows), diffs(dphi, test_rows), diffs(dX, test_rows)
        for n in SHOTS:
            for _ in range(20):
                take = rng.choice(len(tx), size=n, replace=False)
                draws.append((tp[take], tx[take], tx[take], ep, ex, ex, n))
    print_table("DSP domain users (4 users x 20 draws)", score_rows(dfits, dT, draws))


if __name__ == "__main__":
    main()
