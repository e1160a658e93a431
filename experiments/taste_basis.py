"""Would a low-rank user basis learned from other kinds of taste help a new kind, family-out (LoRe-style)?

    python experiments/taste_basis.py --cache runs/basis   # ~15 minutes on 2 CPU cores (features, then numpy)

Feeds docs/decisions/residual.md (issue 27, point 2: "consider a low-rank user basis learned from these
users next to the routed experts; measure both"). The held-out users are the card's: each taste family of
``moerm_build.data.tastes`` and the single-attribute users of ``moerm_build.data.attributes``, on the
held-out pool of ``moerm_build.evaluate.real_eval.attribute_pool``, fitted from N = 5 / 10 / 20 / 50
comparisons of one half of its prompts and scored on the other half; and the four DSP domain users
(evaluation only), with the card's draws.

For each family in turn the basis is learned without it, on the *training* pool (the licensed train
splits' replies, as a shipped basis would be): ``--basis-users`` users of every other family (another
seed, 100 comparisons each) get the frozen probe's logistic fit (pair features standardised on the
training pool, L2 1), and the top ``r`` right singular vectors of their stacked weights (U, F), with their
spread S_r = V diag(s^2 / U) V^T, are the basis. A new user is fitted by MAP logistic regression under the
prior w ~ N(0, beta * 0.5 I + alpha * S_r); beta = 1, alpha = 0 is the probe (L2 1 is a prior variance of
0.5). "basis" fits that alone; "experts + basis" fits the model's expert weights first (the runtime's MAP)
and the basis term on what they leave, as the runtime fits its residual. The expert rows (weights only,
auto residual) are the shipped model's own fits (``UserProfile.fit``), as the card's taste table. DSP's
basis is learned from every family. Nothing here is shipped. Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from moerm_build.data import DATA_DIR, DSP_DOMAINS, bucket
from moerm_build.data.attributes import attribute_benchmark
from moerm_build.data.tastes import TASTE_FAMILIES, taste_benchmark, taste_pool
from moerm_build.evaluate.metrics import RuntimeFeaturizer, few_shot, logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import (PROBE_L2, SHOTS, attribute_pool, dsp_features, dsp_pool, eval_pool,
                                           few_shot_residual, probe_few_shot, train_scaler)
from moerm_lite import fit_map
from moerm_lite.model import DEFAULT_MODEL
from moerm_lite.personalize import penalized_logistic

ROOT = Path(__file__).resolve().parents[1]
BASIS_SEED = 1357  # the basis users' draw (the card's users use the generators' default seeds)


def family_users(ap: dict[str, Any], family: str, n_users: int, n_adapt: int = 50, seed: int | None = None
                 ) -> list[Any]:
    """Users of one family: a taste family's, or ``attribute`` (single-attribute users)."""
    kw: dict[str, Any] = {} if seed is None else {"seed": seed}
    if family == "attribute":
        return attribute_benchmark(ap["pool"], n_users=n_users, n_attributes=1, n_adapt=n_adapt, **kw)
    return taste_benchmark(taste_pool(ap["pool"]), family, n_users=n_users, n_adapt=n_adapt, **kw)


def diffs(Xs: np.ndarray, pairs: Any) -> np.ndarray:
    """(N, F) feature differences preferred minus other."""
    p = np.asarray(pairs)  # (N, 2)
    return Xs[p[:, 0]] - Xs[p[:, 1]]


def basis(Xs: np.ndarray, users: list[Any], r: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-r directions V (F, r) of the probe weights of ``users`` and their variance (r,) per user."""
    W = np.stack([logistic_fit(diffs(Xs, u.adapt), np.ones(len(u.adapt)), PROBE_L2) for u in users])  # (U, F)
    _, s, Vt = np.linalg.svd(W, full_matrices=False)
    return Vt[:r].T, s[:r] ** 2 / len(users)  # (F, r), (r,)


def prior_root(V: np.ndarray, var: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """(F, F) square root of beta * 0.5 I + alpha * V diag(var) V^T."""
    iso = beta * 0.5
    return V @ np.diag(np.sqrt(iso + alpha * var) - np.sqrt(iso)) @ V.T + np.sqrt(iso) * np.eye(len(V))


def fitted(Xs: np.ndarray, users: list[Any], root: np.ndarray, experts: tuple[Any, ...] | None = None
           ) -> dict[str, float]:
    """Accuracy at each N of users fitted under the prior whose root is ``root`` (penalty 0.5 |z|^2 on z,
    w = root z). ``experts`` = (phi, w0, lam, P): the model's expert weights are fitted first (the runtime's
    MAP) and the basis term on what they leave, as the runtime fits its residual."""
    acc: dict[str, list[float]] = {str(n): [] for n in SHOTS}
    for u in users:
        dA, dE = diffs(Xs, u.adapt) @ root, diffs(Xs, u.eval) @ root  # (n, F), (m, F)
        for n in SHOTS:
            if experts is None:
                acc[str(n)].append(pair_accuracy(dE @ logistic_fit(dA[:n], np.ones(n), 0.5)))
                continue
            phi, w0, lam, P = experts
            pA, pE = diffs(phi, u.adapt), diffs(phi, u.eval)  # (n, K), (m, K)
            w, _ = fit_map(pA[:n], w0, lam, P)
            z = penalized_logistic(dA[:n], pA[:n] @ w, 0.5)
            acc[str(n)].append(pair_accuracy(pE @ w + dE @ z))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def main() -> None:
    ap_ = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap_.add_argument("--ranks", type=int, nargs="+", default=[32])
    ap_.add_argument("--users", type=int, default=100, help="held-out users per family (the card's: 100)")
    ap_.add_argument("--basis-users", type=int, default=100, help="basis users per family")
    ap_.add_argument("--train-share", type=float, default=1.0, help="share of the training pool's prompts used")
    ap_.add_argument("--threads", type=int, default=2)
    ap_.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    ap_.add_argument("--cache", type=Path, default=None, help="keep the pools' features in this folder (reruns)")
    ap_.add_argument("--priors", nargs="+", default=["1:0.001", "3:0.1", "10:0.1"],
                     metavar="ALPHA:BETA", help="basis priors compared, at each rank")
    args = ap_.parse_args()
    rz = RuntimeFeaturizer(args.model, threads=args.threads)
    ap, tp = pool_features(rz, args.cache, args.train_share)  # the card's held-out pool; the basis users' training pool
    X = ap["X"]
    mu, sd = tp["X"].mean(0), tp["X"].std(0) + 1e-6  # (F,): the basis' space is the training pool's
    Xb, Xt = (X - mu) / sd, (tp["X"] - mu) / sd
    families = [*TASTE_FAMILIES, "attribute"]
    lam, P = rz.model.config.default_prior_strength, rz.prior_precision
    train = {f: family_users(tp, f, args.basis_users, n_adapt=100, seed=BASIS_SEED) for f in families}
    F = X.shape[1]
    print(f"{F} features; held-out pool {len(ap['pool'].responses)} responses, training pool "
          f"{len(tp['pool'].responses)} ({', '.join(f'{f} {len(u)}' for f, u in train.items())} basis users); "
          f"N = {' / '.join(map(str, SHOTS))}")
    priors = [tuple(float(v) for v in p.split(":")) for p in args.priors]
    print("| held-out family | experts, weights only | experts, auto residual | probe |"
          + "".join(f" {how} r={r}, alpha {a:g}, beta {b:g} |" for r in args.ranks
                    for how in ("basis", "experts + basis") for a, b in priors))
    print("|---" * (4 + 2 * len(args.ranks) * len(priors)) + "|")
    for fam in families:
        users = family_users(ap, fam, args.users)  # the card's users of this family
        row = [few_shot(ap["phi"], users, rz.w0, lam, P=P),
               few_shot_residual(ap["phi"], X, users, rz.w0, lam, P, "auto"),
               probe_few_shot(X, users)]
        others = [u for f in families if f != fam for u in train[f]]
        for r in args.ranks:
            V, var = basis(Xt, others, r)
            row += [fitted(Xb, users, prior_root(V, var, a, b)) for a, b in priors]
            row += [fitted(Xb, users, prior_root(V, var, a, b), (ap["phi"], rz.w0, lam, P)) for a, b in priors]
        cells = [" / ".join(f"{100 * c[str(n)]:.1f}" for n in SHOTS) for c in row]
        print(f"| {fam} ({len(users)}) | " + " | ".join(cells) + " |", flush=True)
    every = [u for f in families for u in train[f]]
    roots = [prior_root(*basis(Xt, every, r), a, b) for r in args.ranks for a, b in priors]
    print(dsp_row(rz, mu, sd, roots))


def pool_features(rz: RuntimeFeaturizer, cache: Path | None, share: float = 1.0
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The held-out pool of ``attribute_pool`` (phi, X) and the training pool (X) of a ``share`` of its
    prompts, features kept in ``cache`` when given."""
    from moerm_build.train.train import attribute_training_pool

    train_pool, _ = attribute_training_pool(DATA_DIR, keep=lambda r: bucket(r["prompt"], "taste-basis") < share)

    def kept(name: str, compute: Any) -> dict[str, np.ndarray]:
        if cache is None:
            return compute()
        f = cache / f"{name}.npz"
        if f.is_file():
            with np.load(f) as z:
                return dict(z)
        arrays = compute()
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(f, **arrays)
        return arrays

    def heldout() -> dict[str, np.ndarray]:
        ap = attribute_pool(rz, with_probe=False)
        return {"phi": ap["phi"], "X": ap["X"]}

    def train() -> dict[str, np.ndarray]:
        pairs = [(train_pool.prompts[g], r) for g, r in zip(train_pool.group, train_pool.responses)]
        return {"X": rz.features(pairs).astype(np.float64)}

    return ({"pool": eval_pool(train_scaler()), **kept("heldout", heldout)},
            {"pool": train_pool, **kept(f"train{share:g}", train)})


def dsp_row(rz: RuntimeFeaturizer, mu: np.ndarray, sd: np.ndarray, roots: list[np.ndarray], draws: int = 20,
            seed: int = 0) -> str:
    """The four DSP domain users (evaluation only; ``real_eval.dsp_users``' draws and halves, so the probe
    reproduces the card's), the probe on DSP's own standardisation, the basis fits in the basis' space
    (``mu``, ``sd``; a basis learned from every family above). Experts + basis is not measured here."""
    features = dsp_features(rz)
    _, raw, first = features  # (I, 5, F) not standardised, (I,) the fitting half
    _, Xd, _ = dsp_pool(rz, features)  # DSP's own standardisation, the card's probe's
    Xp = (raw - mu) / sd
    rng = np.random.default_rng(seed)
    acc = np.zeros((1 + len(roots), len(SHOTS)))
    for u in range(len(DSP_DOMAINS)):
        others = [j for j in range(Xd.shape[1]) if j != u]

        def d(F: np.ndarray, idx: np.ndarray) -> np.ndarray:
            return np.concatenate([F[idx, u] - F[idx, j] for j in others])  # (4 |idx|, F)

        tr, te = np.flatnonzero(first), np.flatnonzero(~first)
        for s, n in enumerate(SHOTS):
            for _ in range(draws):
                take = rng.choice(4 * len(tr), size=n, replace=False)
                acc[0, s] += pair_accuracy(d(Xd, te) @ logistic_fit(d(Xd, tr)[take], np.ones(n), PROBE_L2))
                for i, root in enumerate(roots):
                    z = logistic_fit(d(Xp, tr)[take] @ root, np.ones(n), 0.5)
                    acc[1 + i, s] += pair_accuracy(d(Xp, te) @ root @ z)
    acc /= len(DSP_DOMAINS) * draws
    return "DSP (probe, then each basis prior): " + " | ".join(" / ".join(f"{100 * v:.1f}" for v in a) for a in acc)


if __name__ == "__main__":
    main()
