"""Real-text evaluation: every number here is held out, next to a simple reference.

- **Sanity suite**: real answers (DSP's original Alpaca replies, never trained on) against an
  off-topic answer, a non-answer, a dismissive reply and a six-word truncation (held-out phrasings).
- **HH-RLHF helpful / harmless, WebGPT**: held-out global accuracy of the population weights, next to a
  logistic probe on the frozen pair features trained on the train split (WebGPT: on half of it).
- **Attribute users**: simulated users over text attributes (``moerm_build.data.attributes``) on held-out prompts.
- **DSP domain users**: four users who each prefer replies written for their domain.

References: the unpersonalized model (``w0``) and a logistic probe on the *frozen* pair features
(``moerm_lite.features``: embeddings and text statistics, no training).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moerm_lite import UserProfile
from moerm_lite.features import BlockPrior, block_prior
from moerm_lite.head import expert_features
from moerm_lite.personalize import EVIDENCE

from moerm_build import data
from moerm_build.data.attributes import ATTRIBUTES, ResponsePool, attribute_benchmark
from moerm_build.data.contrast import KINDS, sanity_suite
from moerm_build.data.tastes import TASTE_FAMILIES, taste_benchmark, taste_pool
from moerm_build.evaluate.metrics import SHOTS, few_shot, logistic_fit, pair_accuracy

log = logging.getLogger("moerm_build")
PROBE_L2 = 1.0  # few-shot probes: L2 of the logistic regression on standardised frozen features
# the residual a build recommends (its config's recommended_residual_strength, fit_user's default) and its card
# measures as the default: chosen per user by the evidence (docs/decisions/residual.md; folders built before it: 30)
BUILD_RESIDUAL: float | str = EVIDENCE
# and under this prior per block of the pair features (its config's recommended_residual_prior; before it: none)
BUILD_RESIDUAL_PRIOR: dict[str, float] | None = {"relevance": 0.1, "statistics": 3.0}
HUMAN_LABELLED = {"hh_helpful": data.load_hh_helpful, "hh_harmless": data.load_hh_harmless,
                  "finegrained_qa": data.load_finegrained_qa}  # held-out population accuracy, by name


def features_phi(fz: Any, recs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Model features phi (N, K) and frozen features dX (N, F) of chosen minus rejected."""
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    g, rw, X = fz.outputs_and_features(pairs)  # one embedding pass
    f, X = expert_features(g, rw), X.astype(np.float64)  # (2N, K), (2N, F)
    n = len(recs)
    return f[:n] - f[n:], X[:n] - X[n:]


def sanity_records(rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The sanity suite: each DSP instruction's original reply (``rows``, default all; evaluation only)
    against an off-topic answer, a non-answer, a dismissive reply and its first six words."""
    rows = data.load_dsp() if rows is None else rows
    return sanity_suite([r["query"] for r in rows], [r["responses"]["normal"] for r in rows])


def sanity(fz: Any, w0: np.ndarray) -> dict[str, Any]:
    """Real answer vs each worse kind, on every DSP instruction's original reply (evaluation only)."""
    rows = data.load_dsp()
    suite = sanity_records(rows)
    phi, _ = features_phi(fz, suite)
    win = phi @ w0 > 0
    kinds = np.array([r["kind"] for r in suite])
    return {"n_prompts": len(rows), **{k: float(win[kinds == k].mean()) for k in KINDS},
            "min": float(min(win[kinds == k].mean() for k in KINDS))}


def population(fz: Any, w0: np.ndarray) -> dict[str, Any]:
    """Held-out global accuracy per real source, next to a probe on the frozen features."""
    out: dict[str, Any] = {}
    for name, load in HUMAN_LABELLED.items():
        train, test = load(split="train"), load(split="test")
        phi, dX = features_phi(fz, test)
        _, dXt = features_phi(fz, train)
        out[name] = {"n": len(test), "model": pair_accuracy(phi @ w0),
                     "frozen_probe": pair_accuracy(dX @ logistic_fit(dXt, np.ones(len(dXt)), 10.0))}
    web = data.load_webgpt()
    phi, dX = features_phi(fz, web)
    half = np.array([data.bucket(r["prompt"], "webgpt-probe") < 0.5 for r in web])
    wp = logistic_fit(dX[half], np.ones(half.sum()), 10.0)
    out["webgpt"] = {"n": len(web), "model": pair_accuracy(phi @ w0),
                     "model_second_half": pair_accuracy(phi[~half] @ w0),
                     "frozen_probe_second_half": pair_accuracy(dX[~half] @ wp)}
    return out


def eval_pool(scaler: Any) -> ResponsePool:
    """Held-out responses grouped by prompt: test splits of the licensed sets, DSP and WebGPT."""
    recs = (data.load_hh_helpful(split="test") + data.load_hh_harmless(split="test")
            + data.load_finegrained_qa(split="test") + data.load_topical_chat(split="test") + data.load_webgpt())
    groups = {r["query"]: list(r["responses"].values()) for r in data.load_dsp()}
    pool, _ = ResponsePool.build(recs, scaler=scaler, groups=groups)
    return pool


def train_scaler() -> Any:
    """The attribute standardisation of the training pool (what training users were simulated with)."""
    from moerm_build.train.train import attribute_training_pool

    return attribute_training_pool(data.DATA_DIR)[1]


def spread_transform(Xs: np.ndarray, power: float = 0.5, seed: int = 0) -> np.ndarray:
    """(F, F) C^(power / 2) of the covariance C of 20,000 random pair differences of Xs (R, F), scaled so the
    transformed differences keep their total variance: a logistic fit on ``D @ T`` with an isotropic prior is
    a fit on ``D`` whose prior favours the directions the pool's pairs vary along."""
    i, j = np.random.default_rng(seed).integers(len(Xs), size=(2, 20_000))
    D = Xs[i] - Xs[j]  # (20000, F)
    C = D.T @ D / len(D)  # (F, F)
    ev, V = np.linalg.eigh(C)
    T = (V * np.maximum(ev, 0) ** (power / 2)) @ V.T  # (F, F)
    return T / np.sqrt(np.trace(T @ C @ T) / len(C))


def train_pool_spread(fz: Any, power: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The licensed training pool's frozen pair features (its replies with their prompts): their spread
    sd (F,) and ``spread_transform`` T (F, F) of the standardised features, so that ``(X / sd) @ T`` puts
    any pool's features X in the space where an isotropic prior favours the training pool's directions."""
    from moerm_build.train.train import attribute_training_pool

    pool = attribute_training_pool(data.DATA_DIR)[0]
    X = fz.features([(pool.prompts[g], r) for g, r in zip(pool.group, pool.responses)]).astype(np.float64)
    sd = X.std(0) + 1e-6  # (F,)
    return sd, spread_transform((X - X.mean(0)) / sd, power)


def probe_few_shot(X: np.ndarray, users: list[data.BenchUser], shots: Sequence[int] = SHOTS,
                   l2: float = PROBE_L2, prior: np.ndarray | None = None) -> dict[str, float]:
    """Per user, a logistic probe on frozen feature differences fit on its first N comparisons; ``prior`` (F,):
    each standardised feature's prior scale (``moerm_lite.personalize.prior_scales``; default 1)."""
    Xs = (X - X.mean(0)) / (X.std(0) + 1e-6) * (1.0 if prior is None else prior)  # (R, F)
    acc: dict[str, list[float]] = {str(n): [] for n in shots}
    for u in users:
        a, e = np.array(u.adapt), np.array(u.eval)
        dA, dE = Xs[a[:, 0]] - Xs[a[:, 1]], Xs[e[:, 0]] - Xs[e[:, 1]]
        for n in shots:
            acc[str(n)].append(pair_accuracy(dE @ logistic_fit(dA[:n], np.ones(n), l2)))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def attribute_pool(fz: Any, with_probe: bool = True) -> dict[str, Any]:
    """The held-out attribute pool with the model's features phi (R, K) and the frozen features X (R, F);
    ``with_probe``: also score the frozen-feature probes on it."""
    pool = eval_pool(train_scaler())
    pairs = [(pool.prompts[g], r) for g, r in zip(pool.group, pool.responses)]
    gt, rw, X = fz.outputs_and_features(pairs)
    return {"pool": pool, "phi": expert_features(gt, rw), "X": X.astype(np.float64), "with_probe": with_probe,
            "feature_blocks": fz.feature_blocks}


def attribute_users(ap: dict[str, Any], w0: np.ndarray, prior_strength: float, P: np.ndarray | None,
                    n_users: int = 100, residual_strength: float | str = BUILD_RESIDUAL,
                    residual_prior: Mapping[str, float] | None = BUILD_RESIDUAL_PRIOR) -> dict[str, Any]:
    """Few-shot accuracy of single- and multi-attribute users on held-out prompts (``ap``: attribute_pool),
    with the expert weights alone and with the default residual (``residual_strength``, ``residual_prior``)."""
    blocks = residual_blocks(residual_prior, ap["feature_blocks"])
    pool, phi, X = ap["pool"], ap["phi"], ap["X"]
    out: dict[str, Any] = {"n_prompts": len(pool.prompts), "n_responses": len(pool.responses),
                           "attributes": list(ATTRIBUTES)}
    heldout: list[int] = []  # comparisons each user is scored on
    counts: list[int] = []  # users per group
    for name, k in (("single", 1), ("multi", None)):
        users = attribute_benchmark(pool, n_users=n_users, n_attributes=k)
        heldout += [len(u.eval) for u in users]
        counts.append(len(users))
        out[name] = few_shot(phi, users, w0, prior_strength, P=P)
        out[name + "_residual"] = few_shot_residual(phi, X, users, w0, prior_strength, P, residual_strength,
                                                    residual_prior=blocks)
        if ap.get("with_probe", True):
            out[name + "_frozen_probe"] = probe_few_shot(X, users)
    per_attr: dict[str, float | None] = {}
    for a, attr in enumerate(ATTRIBUTES):  # users who weigh this one attribute, either sign, N = 10
        users = attribute_benchmark(pool, n_users=20, attribute=a, seed=100 + a)
        per_attr[attr] = few_shot(phi, users, w0, prior_strength, shots=(10,), P=P)["10"] if users else None
    out["single_by_attribute_n10"] = per_attr
    out["users"], out["heldout_per_user"] = min(counts), [min(heldout), max(heldout)]
    return out




def residual_blocks(prior: Mapping[str, float] | None, feature_blocks: dict[str, int]) -> BlockPrior | None:
    """A residual prior per block (``BUILD_RESIDUAL_PRIOR``, a config's ``recommended_residual_prior``) over pair
    features of these blocks (a featurizer's ``feature_blocks``); None: none."""
    return None if prior is None else block_prior(prior, feature_blocks)


def fit_user_terms(phi: np.ndarray, X: np.ndarray | None, w0: np.ndarray, prior_strength: float,
                   P: np.ndarray | None, residual_strength: float | str | None = None,
                   residual_prior: BlockPrior | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A user's weights (K,) and residual (F,) fitted by the runtime's own code (``UserProfile.fit``), from
    comparison features phi (N, K) and pair-feature differences X (N, F); no residual: zeros.
    ``residual_strength="auto"``: chosen per user at the fit, as ``fit_user`` does (``UserProfile``);
    ``residual_prior``: the residual's prior per block (``residual_blocks``)."""
    strength = None if X is None else residual_strength
    p = UserProfile(prior_strength=prior_strength, prior_precision=P, residual_strength=strength,
                    residual_prior=residual_prior)
    p.fit(phi, w0, X if strength is not None else None)
    F = 0 if X is None else X.shape[1]
    return p.weights_, p.residual_ if p.residual_ is not None else np.zeros(F)


def few_shot_residual(phi: np.ndarray, X: np.ndarray, users: list[data.BenchUser], w0: np.ndarray,
                      prior_strength: float, P: np.ndarray | None, strength: float | str = BUILD_RESIDUAL,
                      shots: Sequence[int] = SHOTS, residual_prior: BlockPrior | None = None) -> dict[str, float]:
    """``few_shot`` with the residual over pair features (``fit_user(residual_strength=...)``):
    phi (R, K) and X (R, F) of the pool's items, each user fitted on its first N comparisons."""
    acc: dict[str, list[float]] = {str(n): [] for n in shots}
    for u in users:
        a, e = np.array(u.adapt), np.array(u.eval)
        pa, pe = phi[a[:, 0]] - phi[a[:, 1]], phi[e[:, 0]] - phi[e[:, 1]]  # (N, K), (E, K)
        xa, xe = X[a[:, 0]] - X[a[:, 1]], X[e[:, 0]] - X[e[:, 1]]  # (N, F), (E, F)
        for n in shots:
            w, v = fit_user_terms(pa[:n], xa[:n], w0, prior_strength, P, strength, residual_prior)
            acc[str(n)].append(pair_accuracy(pe @ w + xe @ v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def dsp_features(fz: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DSP's replies through the model: phi (I, 5, K), frozen features (I, 5, F), not standardised, of each
    instruction's four domain replies and the original, and which instructions are in the fitting half
    (I,)."""
    rows = data.load_dsp()
    names = (*data.DSP_DOMAINS, "normal")
    pairs = [(r["query"], r["responses"][d]) for r in rows for d in names]
    gt, rw, X = fz.outputs_and_features(pairs)
    phi = expert_features(gt, rw).reshape(len(rows), len(names), -1)  # (I, 5, K)
    X = X.astype(np.float64).reshape(len(rows), len(names), -1)  # (I, 5, F)
    first = np.array([data.bucket(r["query"], "dsp-half") < 0.5 for r in rows])
    return phi, X, first


def dsp_pool(fz: Any, features: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``dsp_features`` (``features``, computed here if not given) with the frozen features standardised
    over all of DSP's replies."""
    phi, X, first = dsp_features(fz) if features is None else features
    flat = X.reshape(-1, X.shape[-1])  # (5 I, F)
    return phi, (X - flat.mean(0)) / (flat.std(0) + 1e-6), first


def dsp_users(fz: Any, w0: np.ndarray, prior_strength: float, P: np.ndarray | None, draws: int = 20,
              seed: int = 0, residual_strength: float | str = BUILD_RESIDUAL,
              pool: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
              residual_prior: Mapping[str, float] | None = BUILD_RESIDUAL_PRIOR) -> dict[str, Any]:
    """Four domain users: fit on N comparisons from half of the instructions, score all of the other half
    (``pool``: ``dsp_pool(fz)``, computed here if not given); the default residual ``residual_strength`` under
    ``residual_prior``."""
    phi, X, first = dsp_pool(fz) if pool is None else pool
    blocks = residual_blocks(residual_prior, fz.feature_blocks)
    names = (*data.DSP_DOMAINS, "normal")
    rng = np.random.default_rng(seed)
    res: dict[str, Any] = {"model": {}, "frozen_probe": {}, "model_plus_residual": {}, "model_auto": {},
                           "unpersonalized": {}, "draws": draws}
    per_user: dict[str, dict[str, float]] = {}
    for u, dom in enumerate(data.DSP_DOMAINS):
        others = [j for j in range(len(names)) if j != u]

        def diffs(F: np.ndarray, idx: np.ndarray) -> np.ndarray:
            return np.concatenate([F[idx, u] - F[idx, j] for j in others])  # (4 * |idx|, dim)

        test_phi, test_X = diffs(phi, np.flatnonzero(~first)), diffs(X, np.flatnonzero(~first))
        train_phi, train_X = diffs(phi, np.flatnonzero(first)), diffs(X, np.flatnonzero(first))
        row = {"unpersonalized": pair_accuracy(test_phi @ w0)}
        for n in SHOTS:
            m, p, resid, auto = [], [], [], []
            for _ in range(draws):
                take = rng.choice(len(train_phi), size=n, replace=False)
                # the residual is fitted after w, which it leaves as fit_map gives it: one fit serves both
                w, v = fit_user_terms(train_phi[take], train_X[take], w0, prior_strength, P,
                                      residual_strength, blocks)
                m.append(pair_accuracy(test_phi @ w))
                p.append(pair_accuracy(test_X @ logistic_fit(train_X[take], np.ones(n), PROBE_L2)))
                resid.append(pair_accuracy(test_phi @ w + test_X @ v))
                wa, va = fit_user_terms(train_phi[take], train_X[take], w0, prior_strength, P, "auto")
                auto.append(pair_accuracy(test_phi @ wa + test_X @ va))
            row[f"model_{n}"], row[f"probe_{n}"] = float(np.mean(m)), float(np.mean(p))
            row[f"residual_{n}"], row[f"auto_{n}"] = float(np.mean(resid)), float(np.mean(auto))
        w_all, v = fit_user_terms(train_phi, train_X, w0, prior_strength, P, residual_strength, blocks)
        row["model_all"] = pair_accuracy(test_phi @ w_all)
        row["residual_all"] = pair_accuracy(test_phi @ w_all + test_X @ v)
        wa, va = fit_user_terms(train_phi, train_X, w0, prior_strength, P, "auto")
        row["auto_all"] = pair_accuracy(test_phi @ wa + test_X @ va)
        row["probe_all"] = pair_accuracy(test_X @ logistic_fit(train_X, np.ones(len(train_X)), PROBE_L2))
        per_user[dom] = row
    for shot in [*map(str, SHOTS), "all"]:
        res["model"][shot] = float(np.mean([r[f"model_{shot}"] for r in per_user.values()]))
        res["frozen_probe"][shot] = float(np.mean([r[f"probe_{shot}"] for r in per_user.values()]))
        res["model_plus_residual"][shot] = float(np.mean([r[f"residual_{shot}"] for r in per_user.values()]))
        res["model_auto"][shot] = float(np.mean([r[f"auto_{shot}"] for r in per_user.values()]))
    res["unpersonalized"] = float(np.mean([r["unpersonalized"] for r in per_user.values()]))
    res["per_user"] = per_user
    res["train_comparisons"] = int(4 * first.sum())
    return res


def attribute_correlations(phi: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Pearson correlation of each expert's gated reward with each attribute over a pool, (K, A)."""
    from moerm_lite.experts import correlations

    return correlations(phi, z)


def taste_users(ap: dict[str, Any], w0: np.ndarray, prior_strength: float, P: np.ndarray | None,
                n_users: int = 100, residual_strength: float | str = BUILD_RESIDUAL,
                residual_prior: Mapping[str, float] | None = BUILD_RESIDUAL_PRIOR) -> dict[str, Any]:
    """Per taste family (all held out): the model's fitted users, by default (the residual at
    ``residual_strength`` under ``residual_prior``, the folder's recommended ones), with the expert weights
    alone and with the residual chosen per user (``"auto"``), and the frozen probe, at N = 5 / 10 / 20 / 50
    (``ap``: ``moerm_build.evaluate.real_eval.attribute_pool``)."""
    pool = taste_pool(ap["pool"])
    blocks = residual_blocks(residual_prior, ap["feature_blocks"])
    out: dict[str, Any] = {"members": {f: list(m) for f, m in TASTE_FAMILIES.items()}}
    heldout: list[int] = []
    for fam in TASTE_FAMILIES:
        users = taste_benchmark(pool, fam, n_users=n_users)
        heldout += [len(u.eval) for u in users]
        out[fam] = {"users": len(users), "model": few_shot(ap["phi"], users, w0, prior_strength, P=P),
                    "model_residual": few_shot_residual(ap["phi"], ap["X"], users, w0, prior_strength, P,
                                                        residual_strength, residual_prior=blocks),
                    "model_auto": few_shot_residual(ap["phi"], ap["X"], users, w0, prior_strength, P, "auto"),
                    "frozen_probe": probe_few_shot(ap["X"], users)}
    out["heldout_per_user"] = [min(heldout), max(heldout)]  # comparisons each user is scored on
    return out
