"""What bounds the attribute-user benchmark: how much of each text attribute the model can see at all.

    python experiments/attribute_bound.py                      # the shipped model, through the runtime
    python experiments/attribute_bound.py --model models/mine  # about 4 minutes on 2 cores

Feeds docs/decisions/attribute-bound.md.

For each attribute of ``moerm_build.data.attributes`` (standardised as the benchmark does), a ridge regression
predicts the attribute of a reply from

- the 13 text statistics of ``moerm_lite.features`` (what the shared experts see),
- the frozen pair features (normalised response embedding, prompt x response, the statistics),
- the model's K expert outputs ``pi * r`` (all a fitted user's weights can combine),

fitted on the replies of the training pool (train splits of the licensed sets) and scored on the held-out
pool of the benchmark (test splits, DSP, WebGPT): R^2, and the share of the benchmark's own comparisons
(replies to the same prompt whose attribute differs by >= 0.25 std) put in the right order. The last
column is a ceiling for a single-attribute user with unlimited comparisons: a user who weighs an
attribute the expert outputs cannot order is not fittable from any N.

Then whether a richer basis would help: the benchmark's few-shot users (and the persona users, which
must not get worse) fitted on the expert outputs plus the text statistics as linear experts
(standardised, 2 tanh(z / 2) like the bounded experts, population weight 0, prior precision tau I).

Needs the export extra and ../shared/data; embeddings come from the build side's cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import ATTRIBUTES, ResponsePool, attribute_benchmark, pair_order
from moerm_build.evaluate.metrics import RuntimeFeaturizer, few_shot
from moerm_build.evaluate.real_eval import eval_pool
from moerm_build.train.train import attribute_training_pool
from moerm_lite.features import SURFACE
from moerm_lite.head import expert_features
from moerm_lite.model import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
TAUS = (1.0, 3.0, 10.0, 30.0)
STYLE = [i for i, n in enumerate(SURFACE) if n not in ("cosine", "has_prompt", "log_prompt_words")]  # of the reply


def ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights (F + 1,) of ridge regression with an unpenalised intercept (last entry)."""
    mu, sd = X.mean(0), X.std(0) + 1e-8
    Z = (X - mu) / sd  # (N, F)
    w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))  # (F,)
    return np.concatenate([w / sd, [y.mean() - (mu / sd) @ w]])


def predict(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return X @ w[:-1] + w[-1]


def fit_with_validation(X: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Ridge with alpha chosen on a fifth of the training replies, then refitted on all of them."""
    val = np.random.default_rng(seed).random(len(y)) < 0.2
    best = min(ALPHAS, key=lambda a: np.mean((predict(X[val], ridge(X[~val], y[~val], a)) - y[val]) ** 2))
    return ridge(X, y, best)


def views(fz: RuntimeFeaturizer, pool: ResponsePool) -> dict[str, np.ndarray]:
    pairs = [(pool.prompts[g], r) for r, g in zip(pool.responses, pool.group)]
    gates, rewards, X = fz.outputs_and_features(pairs)  # (R, K), (R, K), (R, F): one embedding pass
    X = X.astype(np.float64)
    return {"text statistics": X[:, -len(SURFACE):], "frozen features": X,
            "expert outputs": expert_features(gates, rewards)}


def with_statistics(phi: np.ndarray, stats: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Expert outputs (N, K) plus the reply's text statistics as bounded linear experts, (N, K + S')."""
    z = (stats[:, STYLE] - mu[STYLE]) / sd[STYLE]
    return np.hstack([phi, 2.0 * np.tanh(z / 2.0)])


def statistic_experts(fz: RuntimeFeaturizer, train: ResponsePool, test: ResponsePool,
                      Vtr: dict[str, np.ndarray], Vte: dict[str, np.ndarray]) -> None:
    st = data.load_persona()
    stmt = [("", t) for t in st.text]
    gates, rewards, X = fz.outputs_and_features(stmt)
    phi_p, stats_p = expert_features(gates, rewards), X[:, -len(SURFACE):].astype(np.float64)
    mu, sd = Vtr["text statistics"].mean(0), Vtr["text statistics"].std(0) + 1e-6
    persona = data.persona_benchmark(st, n_users=200)
    single = attribute_benchmark(test, n_users=100, n_attributes=1)
    multi = attribute_benchmark(test, n_users=100, n_attributes=None)
    K, lam, P = fz.n_experts, fz.model.config.default_prior_strength, fz.prior_precision
    print(f"\nfew-shot accuracy at N = 5 / 10 / 20 / 50, prior strength {lam} (the model's):")
    print(f"{'basis':<34}{'1 attribute':>28}{'2-3 attributes':>28}{'persona':>28}")
    for tau in (None, *TAUS):
        if tau is None:
            name, phi_a, phi_s, w0, PP = f"the {K} experts (shipped)", Vte["expert outputs"], phi_p, fz.w0, P
        else:
            name = f"+ {len(STYLE)} statistics, tau {tau:g}"
            phi_a = with_statistics(Vte["expert outputs"], Vte["text statistics"], mu, sd)
            phi_s = with_statistics(phi_p, stats_p, mu, sd)
            w0 = np.concatenate([fz.w0, np.zeros(len(STYLE))])
            PP = np.eye(K + len(STYLE)) * tau
            PP[:K, :K] = np.eye(K) if P is None else P
        cells = [few_shot(phi, users, w0, lam, P=PP) for phi, users in ((phi_a, single), (phi_a, multi),
                                                                         (phi_s, persona))]
        print(f"{name:<34}" + "".join(f"{' / '.join(f'{100 * c[n]:.1f}' for n in ('5', '10', '20', '50')):>28}"
                                      for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    args = ap.parse_args()
    train, scaler = attribute_training_pool(data.DATA_DIR)
    test = eval_pool(scaler)
    fz = RuntimeFeaturizer(args.model)
    Vtr, Vte = views(fz, train), views(fz, test)
    print(f"attribute decodability: ridge fitted on {len(train.responses)} training replies, scored on "
          f"{len(test.responses)} held-out replies ({Path(args.model).name}, int8 runtime); "
          "R^2 / same-prompt pairs ordered right")
    print(f"{'attribute':<14}" + "".join(f"{v:>26}" for v in Vtr))
    for a, name in enumerate(ATTRIBUTES):
        cells = []
        for v in Vtr:
            pred = predict(Vte[v], fit_with_validation(Vtr[v], train.z[:, a]))
            r2 = 1 - np.mean((pred - test.z[:, a]) ** 2) / test.z[:, a].var()
            cells.append(f"{r2:8.2f} / {100 * pair_order(test, pred, a):5.1f}%")
        print(f"{name:<14}" + "".join(f"{c:>26}" for c in cells))
    statistic_experts(fz, train, test, Vtr, Vte)


if __name__ == "__main__":
    main()
