"""Evaluate a checkpoint (torch) or a model folder (the ONNX runtime) on every benchmark.

All few-shot fits use ``moerm_lite.fit_map``, the runtime's own MAP function, so the numbers
here are the numbers a user of ``RewardModel.fit_user`` gets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moerm_lite import RewardModel, fit_map
from moerm_lite.head import expert_features

from . import data as D

log = logging.getLogger("export")
SHOTS = (5, 10, 20, 50)
LAMBDA_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


class Featurizer(Protocol):
    n_experts: int
    prior_precision: np.ndarray | None  # P (K, K) of the user prior; None: the identity

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Dense (gating_output, rewards), each (N, K)."""


class TorchFeaturizer:
    """The torch model of a checkpoint, on cached embeddings (or its fine-tuned backbone)."""

    def __init__(self, run: "str | Path") -> None:
        import torch

        from .embed import EmbeddingCache, pair_tokenizer
        from .train import load_checkpoint

        self.ckpt, self.head, self.backbone = load_checkpoint(run)
        self.n_experts = self.head.args.n_experts
        self.prior_precision = self.head.prior_precision()
        cfg = self.ckpt["config"]
        self._torch = torch
        if self.backbone is None:
            self.cache = EmbeddingCache(self.ckpt["backbone_path"], cfg["max_length"])
        else:
            self.tok = pair_tokenizer(self.ckpt["backbone_path"], cfg["max_length"], Path(run))

    def embed(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if self.backbone is None:
            return self.cache.get(pairs)
        from .embed import embed_pairs

        return embed_pairs(self.backbone, self.tok, pairs)

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.no_grad():
            o = self.head(self._torch.from_numpy(self.embed(pairs)))
        return o["gating_output"].numpy(), o["rewards"].numpy()

    def all_rewards(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Every expert's reward, routed or not, (N, K)."""
        with self._torch.no_grad():
            return self.head.rewards(self._torch.from_numpy(self.embed(pairs))).numpy()

    @property
    def w0(self) -> np.ndarray:
        return self.head.w0.detach().double().numpy()


class RuntimeFeaturizer:
    """A model folder through ``moerm_lite`` (ONNX, int8 or fp32)."""

    def __init__(self, folder: "str | Path", precision: str = "int8", threads: int = 2) -> None:
        self.model = RewardModel.load(folder, precision=precision, threads=threads)
        self.n_experts = self.model.n_experts
        self.prior_precision = self.model.prior_precision
        self.w0 = self.model.w0

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        o = self.model.expert_outputs(list(pairs), batch_size=64)
        return o["gating_output"], o["rewards"]


# ------------------------------------------------------------------------ persona
def pair_accuracy(z: np.ndarray) -> float:
    """Share of comparisons with score(chosen) > score(rejected); ties count half."""
    return float(np.mean((z > 0) + 0.5 * (z == 0)))


def few_shot(phi_stmt: np.ndarray, users: list[D.BenchUser], w0: np.ndarray, lam: float,
             shots: Sequence[int] = SHOTS, P: np.ndarray | None = None) -> dict[str, float]:
    """Mean held-out accuracy after fitting each user on its first N comparisons (prior N(w0, (lam P)^-1))."""
    acc: dict[str, list[float]] = {str(n): [] for n in shots}
    acc["global"] = []
    for u in users:
        a, e = np.array(u.adapt), np.array(u.eval)
        phi_a = phi_stmt[a[:, 0]] - phi_stmt[a[:, 1]]  # (N, K)
        phi_e = phi_stmt[e[:, 0]] - phi_stmt[e[:, 1]]  # (100, K)
        acc["global"].append(pair_accuracy(phi_e @ w0))
        for n in shots:
            w, _ = fit_map(phi_a[:n], w0, lam, P)
            acc[str(n)].append(pair_accuracy(phi_e @ w))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def choose_lambda(phi_stmt: np.ndarray, st: D.Statements, w0: np.ndarray, n_users: int = 100,
                  P: np.ndarray | None = None) -> float:
    """lambda with the best mean few-shot accuracy on validation users (a seed apart from test)."""
    val = D.persona_benchmark(st, n_users=n_users, seed=777)
    scores = {lam: np.mean([v for k, v in few_shot(phi_stmt, val, w0, lam, P=P).items() if k != "global"])
              for lam in LAMBDA_GRID}
    log.info("lambda grid: %s", {k: round(v, 4) for k, v in scores.items()})
    return float(max(scores, key=scores.get))


def interpretability(phi_stmt: np.ndarray, gates: np.ndarray, st: D.Statements) -> dict[str, Any]:
    """Per axis: the expert whose gated reward best tracks the +/-1 labels, and its routing share."""
    idx = D.statement_split(st, "test")
    rows = []
    for a, name in enumerate(st.axes):
        sel = idx[st.axis[idx] == a]
        y = st.y[sel].astype(float)
        f = phi_stmt[sel]  # (S_a, K)
        fc = f - f.mean(0)
        denom = np.sqrt((fc**2).sum(0) * ((y - y.mean()) ** 2).sum()) + 1e-12
        corr = (fc * (y - y.mean())[:, None]).sum(0) / denom  # (K,)
        k = int(np.argmax(np.abs(corr)))
        rows.append({"axis": name, "expert": k, "corr": float(corr[k]),
                     "routing_share": float((gates[sel, k] > 0).mean())})
    return {"axes": rows, "distinct_best_experts": len({r["expert"] for r in rows}),
            "mean_best_abs_corr": float(np.mean([abs(r["corr"]) for r in rows])),
            "mean_routing_share": float(np.mean([r["routing_share"] for r in rows]))}


def logistic_fit(X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """argmin_w  -sum log sigmoid(y * X w) + l2 * ||w||^2  (L-BFGS-B, analytic gradient)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = y * (X @ w)
        return float(-log_expit(z).sum() + l2 * w @ w), -((y * expit(-z)) @ X) + 2 * l2 * w

    return minimize(loss, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B").x


def probe_ceiling(emb: np.ndarray, st: D.Statements, users: list[D.BenchUser]) -> dict[str, float]:
    """Supervised ceiling: per-axis logistic probes on frozen embeddings as the features.

    Fitted like the model (MAP, identity prior around 0), with its own lambda from validation users.
    """
    train = D.statement_split(st, "train")
    feats = np.zeros((len(st.text), len(st.axes)))
    X = np.hstack([emb, np.ones((len(emb), 1))])
    for a in range(len(st.axes)):
        sel = train[st.axis[train] == a]
        w = logistic_fit(X[sel], st.y[sel].astype(float), l2=5e-3)
        feats[st.axis == a, a] = np.tanh(X[st.axis == a] @ w / 4)  # probe output on its own axis
    w0 = np.zeros(len(st.axes))
    lam = choose_lambda(feats, st, w0)
    return {**few_shot(feats, users, w0, lam), "lambda": lam}


def pair_probe(embed: Any, train: list[D.Record], test: list[D.Record], l2: float = 10.0) -> float:
    """Held-out accuracy of one L2 logistic regression on embedding differences (chosen - rejected).

    The ceiling of a frozen backbone for a population score on that data.
    """
    def diff(recs: list[D.Record]) -> np.ndarray:
        return (embed([(r["prompt"], r["chosen"]) for r in recs])
                - embed([(r["prompt"], r["rejected"]) for r in recs])).astype(np.float64)

    X, Xt = diff(train), diff(test)
    return pair_accuracy(Xt @ logistic_fit(X, np.ones(len(X)), l2))


# -------------------------------------------------------------------- real text
def global_accuracy(fz: Featurizer, recs: list[D.Record], w: np.ndarray) -> float:
    phi = comparison_features(fz, recs)
    return pair_accuracy(phi @ w)


def comparison_features(fz: Featurizer, recs: list[D.Record]) -> np.ndarray:
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    g, r = fz.outputs(pairs)
    f = expert_features(g, r)
    return f[: len(recs)] - f[len(recs):]  # (N, K)


def relabeled_hh(fz: Featurizer, w0: np.ndarray, lam: float, reps: int = 50, seed: int = 0,
                 P: np.ndarray | None = None) -> dict[str, Any]:
    """Two annotator objectives as two users: global, oracle (fit on all) and few-shot N = 10/50."""
    recs = D.load_relabeled_hh()
    phi = comparison_features(fz, recs)
    users = np.array([r["user_id"] for r in recs])
    rng = np.random.default_rng(seed)
    res: dict[str, Any] = {"global": pair_accuracy(phi @ w0), "per_objective": {}}
    for obj in ("helpful", "harmless"):
        X = phi[users == obj]  # (N_obj, K)
        w_all, _ = fit_map(X, w0, lam, P)
        row = {"global": pair_accuracy(X @ w0), "oracle": pair_accuracy(X @ w_all),
               "weights": np.round(w_all, 3).tolist()}
        for n in (10, 50):
            accs = []
            for _ in range(reps):
                perm = rng.permutation(len(X))
                w, _ = fit_map(X[perm[:n]], w0, lam, P)
                accs.append(pair_accuracy(X[perm[n:]] @ w))
            row[str(n)] = float(np.mean(accs))
        res["per_objective"][obj] = row
    for key in ("10", "50", "oracle"):
        res[key] = float(np.mean([res["per_objective"][o][key] for o in ("helpful", "harmless")]))
    return res


def relabeled_probe(embed: Any) -> dict[str, float]:
    """Per objective, a logistic probe on embedding differences trained on half of its pairs (split by
    prompt) and tested on the other half: how far a frozen backbone can separate each objective at all."""
    recs = D.load_relabeled_hh()
    out = {}
    for obj in ("helpful", "harmless"):
        mine = [r for r in recs if r["user_id"] == obj]
        half = [D.bucket(r["prompt"], "relabeled-probe") < 0.5 for r in mine]
        out[obj] = pair_probe(embed, [r for r, h in zip(mine, half) if h], [r for r, h in zip(mine, half) if not h])
    out["mean"] = float(np.mean([out["helpful"], out["harmless"]]))
    return out


def source_gates(fz: Featurizer, persona_gates: np.ndarray) -> dict[str, np.ndarray]:
    """Dense gates (N, K) per source: held-out HH and QA chosen replies, and the persona statements."""
    out = {}
    for name, recs in (("hh_harmless", D.load_hh_harmless(split="test")),
                       ("finegrained_qa", D.load_finegrained_qa(split="test"))):
        out[name] = fz.outputs([(x["prompt"], x["chosen"]) for x in recs])[0]
    out["persona"] = persona_gates
    return out


def name_experts(phi_stmt: np.ndarray, st: D.Statements, source_gates: dict[str, np.ndarray]) -> list[str]:
    """A name per expert from data: its best-correlated persona axis and sign, else its main source."""
    K = phi_stmt.shape[1]
    idx = D.statement_split(st, "test")
    names = []
    for k in range(K):
        f = phi_stmt[idx, k]
        best, best_c = "", 0.0
        for a in range(len(st.axes)):
            on = st.axis[idx] == a
            if f[on].std() > 0:
                c = float(np.corrcoef(f[on], st.y[idx][on])[0, 1])
                if abs(c) > abs(best_c):
                    best, best_c = st.axes[a], c
        share = {s: float((g[:, k] > 0).mean()) for s, g in source_gates.items()}
        if abs(best_c) >= 0.5:
            names.append(f"{best}{'+' if best_c > 0 else '-'}")
        elif max(share.values()) < 0.01:
            names.append("unused")  # routed for under 1% of every source's inputs
        else:
            names.append(f"{max(share, key=share.get)}-mix")
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}{seen[n]}")
    return out


def evaluate(fz: Featurizer, w0: np.ndarray, *, lam: float | None = None, n_users: int = 200,
             with_probes: bool = False, emb: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric of the training issue for one featurizer."""
    st = D.load_persona()
    g, r = fz.outputs([("", s) for s in st.text])
    phi_stmt = expert_features(g, r)  # (S, K)
    P = fz.prior_precision
    if lam is None:
        lam = choose_lambda(phi_stmt, st, w0, P=P)
    users = D.persona_benchmark(st, n_users=n_users)
    res: dict[str, Any] = {"lambda": lam, "prior": "identity" if P is None else "training users",
                           "persona": few_shot(phi_stmt, users, w0, lam, P=P),
                           "interpretability": interpretability(phi_stmt, g, st)}
    if P is not None:  # what the learned prior buys: the same features under P = I, lambda re-chosen
        lam_i = choose_lambda(phi_stmt, st, w0)
        res["persona_identity_prior"] = {**few_shot(phi_stmt, users, w0, lam_i), "lambda": lam_i}
    if with_probes and emb is not None:
        res["probe_ceiling"] = probe_ceiling(emb, st, users)
        res["linear_probe_test"] = {
            name: pair_probe(fz.embed, load(split="train"), load(split="test"))
            for name, load in (("hh_harmless", D.load_hh_harmless), ("finegrained_qa", D.load_finegrained_qa))}
        res["relabeled_hh_probe"] = relabeled_probe(fz.embed)
    res["hh_harmless_test"] = global_accuracy(fz, D.load_hh_harmless(split="test"), w0)
    res["finegrained_qa_test"] = global_accuracy(fz, D.load_finegrained_qa(split="test"), w0)
    res["relabeled_hh"] = relabeled_hh(fz, w0, lam, P=P)
    src_gates = source_gates(fz, g)
    res["expert_names"] = name_experts(phi_stmt, st, src_gates)
    res["routing_share_by_source"] = {s: np.round((v > 0).mean(0), 3).tolist() for s, v in src_gates.items()}
    return res
