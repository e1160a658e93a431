"""Active questions on the persona-16 benchmark: information-gain picks versus random picks.

Each test user of the benchmark (same users and held-out comparisons as the few-shot table)
gets a pool of candidate comparisons drawn by the benchmark's own recipe from the adaptation
statements. *Random* asks them in random order, as the few-shot protocol does. *Active*
asks, one at a time, the pool comparison ``RewardModel.next_comparison``'s rule picks
(``moerm_lite.active.question_scores``: variance reduction for the first answers, then expected
accuracy, under the answers so far fitted with a prior ``SELECTION_PRIOR`` times stronger),
the pool itself as targets. Accuracy after N answers is measured on the user's 100 held-out
comparisons, which the selection never sees, with the user's own fit (the runtime's ``fit_map``
at the model's prior strength).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moerm_lite import fit_map
from moerm_lite.active import SELECTION_PRIOR, prior_covariance, question_scores
from moerm_lite.head import expert_features

from moerm_build import data
from moerm_build.evaluate.metrics import RuntimeFeaturizer, pair_accuracy


def active_curve(phi_stmt: np.ndarray, st: data.Statements, w0: np.ndarray, prior_strength: float, *,
                 P: np.ndarray | None = None, n_users: int = 200, pool_size: int = 200, rounds: int = 20,
                 seed: int = 2024) -> dict[str, Any]:
    """Mean held-out accuracy after N = 1..rounds answers, for active and random questions.

    Args:
        phi_stmt: (S, K) gated expert rewards of every persona statement.
        w0: (K,) population weights (the prior mean); prior_strength, P: the prior strength and precision.
    """
    rng = np.random.default_rng(seed)
    users = data.persona_benchmark(st, n_users=n_users)
    adapt_pool = data.statement_split(st, "adapt")
    K = len(w0)
    acc = {"active": np.zeros((n_users, rounds)), "random": np.zeros((n_users, rounds))}
    for u_i, u in enumerate(users):
        pool = np.array(data.sample_comparisons(rng, u.w, st, adapt_pool, pool_size))  # (P, 2)
        phi_pool = phi_stmt[pool[:, 0]] - phi_stmt[pool[:, 1]]  # (P, K)
        e = np.array(u.eval)
        phi_eval = phi_stmt[e[:, 0]] - phi_stmt[e[:, 1]]  # (100, K)
        order = rng.permutation(pool_size)
        for n in range(1, rounds + 1):
            w, _ = fit_map(phi_pool[order[:n]], w0, prior_strength, P)
            acc["random"][u_i, n - 1] = pair_accuracy(phi_eval @ w)
        asked: list[int] = []
        select = SELECTION_PRIOR * prior_strength
        w, cov = w0.copy(), prior_covariance(select, P, K)  # the selection posterior
        for n in range(1, rounds + 1):
            gain = question_scores(phi_pool, w, cov, len(asked))  # (P,)
            gain[asked] = -np.inf
            asked.append(int(np.argmax(gain)))
            w, cov = fit_map(phi_pool[asked], w0, select, P)
            w_user, _ = fit_map(phi_pool[asked], w0, prior_strength, P)  # what the user is scored with
            acc["active"][u_i, n - 1] = pair_accuracy(phi_eval @ w_user)
    curve = {k: [round(float(x), 4) for x in v.mean(0)] for k, v in acc.items()}
    at10 = acc["active"][:, 9] - acc["random"][:, 9] if rounds >= 10 else np.zeros(1)
    return {"users": n_users, "pool_size": pool_size, "prior_strength": prior_strength,
            "N": list(range(1, rounds + 1)),
            **curve, "gain_at_10": round(float(at10.mean()), 4),
            "gain_at_10_stderr": round(float(at10.std(ddof=1) / np.sqrt(len(at10))), 4)}


def model_active_curve(folder: str | Path, precision: str = "int8", n_users: int = 200) -> dict[str, Any]:
    """:func:`active_curve` through a model folder, at its default prior strength."""
    rz = RuntimeFeaturizer(folder, precision=precision)
    st = data.load_persona()
    g, r = rz.outputs([("", s) for s in st.text])
    prior_strength = rz.model.config.default_prior_strength
    return active_curve(expert_features(g, r), st, rz.w0, prior_strength, P=rz.prior_precision, n_users=n_users)
