"""What every evaluation shares: featurizers (a checkpoint in torch, a model folder through the runtime),
pair accuracy, the logistic probe, few-shot user fits, persona statements, expert naming.

All few-shot fits use ``moerm_lite.fit_map``, the runtime's own MAP function, so the numbers
here are the numbers a user of ``RewardModel.fit_user`` gets. ``moerm_build.evaluate.report`` runs
them all on one model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moerm_lite import RewardModel, fit_map
from moerm_lite.personalize import penalized_logistic
from moerm_lite.features import check_layout, feature_blocks
from moerm_lite.head import expert_features
from moerm_lite.request_gate import RequestGate

from moerm_build import data
from moerm_build.data.attributes import ATTRIBUTE_WORDS

log = logging.getLogger("moerm_build")
SHOTS = (5, 10, 20, 50)
PRIOR_STRENGTH_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


class Featurizer(Protocol):
    n_experts: int
    n_shared: int  # the last n_shared experts are always active
    n_readout: int  # the last n_readout of those are read-outs of every feature (moerm_build.train.readout)
    readout_names: list[str]  # what each read-out rewards, in words
    prior_precision: np.ndarray | None  # P (K, K) of the user prior; None: the identity
    feature_blocks: dict[str, int]  # the pair features' blocks in order (moerm_lite.features.feature_blocks)

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Dense (gating_output, rewards), each (N, K)."""

    def features(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Frozen pair features (N, F), the head's input."""

    def outputs_and_features(self, pairs: Sequence[tuple[str, str]]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``outputs`` and ``features`` of the same pairs from one embedding pass."""


class TorchFeaturizer:
    """The torch model of a checkpoint, on cached embeddings of its backbone, with the checkpoint's request
    gate (``moerm_lite.request_gate``) as the model folder applies it; ``request_gate=False``: the head as
    trained, without it."""

    def __init__(self, run: "str | Path", request_gate: bool = True) -> None:
        import torch

        from moerm_build.train.train import TrainConfig, load_checkpoint, run_cache

        self.ckpt, self.head = load_checkpoint(run)
        self.n_experts, self.n_shared = self.head.args.n_experts, self.head.args.n_shared
        self.n_readout = self.head.args.n_readout
        self.readout_names = readout_names(self.ckpt.get("readout"), self.n_readout)
        self.prior_precision = self.head.prior_precision()
        self._torch = torch
        cfg = TrainConfig.of_run(self.ckpt)
        stats = len(check_layout(cfg.feature_layout))
        self.feature_blocks = feature_blocks((self.head.args.n_features - stats) // 2, cfg.feature_layout)
        cache = run_cache(cfg, self.ckpt["backbone_path"])
        self.features, self.embed = cache.features, cache.get
        gate = self.ckpt.get("request_gate") if request_gate else None
        self.request_gate = (None if gate is None else RequestGate.from_dict(
            gate, self.n_experts, self.feature_blocks["reply"]))

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        g, r, _ = self.outputs_and_features(pairs)
        return g, r

    def outputs_and_features(self, pairs: Sequence[tuple[str, str]]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self.features(pairs)  # (N, F)
        with self._torch.no_grad():
            o = self.head(self._torch.from_numpy(x))
        g = o["gating_output"].numpy()  # (N, K)
        if self.request_gate is not None:
            from moerm_build.train.request_gate import prompt_embeddings

            prompts = [p for p, _ in pairs]
            on = self.request_gate.on(prompt_embeddings(self.embed, prompts), prompts)  # (N,)
            g = self.request_gate.apply_dense(g, on)  # (N, K)
        return g, o["rewards"].numpy(), x

    @property
    def w0(self) -> np.ndarray:
        return self.head.w0.detach().double().numpy()


class RuntimeFeaturizer:
    """A model folder through ``moerm_lite`` (ONNX, int8 or fp32)."""

    def __init__(self, folder: "str | Path", precision: str = "int8", threads: int = 2) -> None:
        self.model = RewardModel.load(folder, precision=precision, threads=threads)
        self.n_experts, self.n_shared = self.model.n_experts, self.model.config.n_shared
        readout = self.model.config.extra.get("training", {}).get("readout") or {}  # what the build recorded
        self.n_readout = int(readout.get("experts", 0))
        self.readout_names = readout_names(readout, self.n_readout)
        self.prior_precision = self.model.prior_precision
        self.feature_blocks = feature_blocks(self.model.config.hidden_size, self.model.config.feature_layout)
        self.w0 = self.model.w0

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        o = self.model.expert_outputs(list(pairs), batch_size=64)
        return o["gating_output"], o["rewards"]

    def features(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return self.model.pair_features(list(pairs), batch_size=64)[0]

    def outputs_and_features(self, pairs: Sequence[tuple[str, str]]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        o = self.model.expert_outputs(list(pairs), batch_size=64, with_features=True)
        return o["gating_output"], o["rewards"], o["features"]


# ------------------------------------------------------------------------ persona
def pair_accuracy(z: np.ndarray) -> float:
    """Share of comparisons with score(chosen) > score(rejected); ties count half."""
    return float(np.mean((z > 0) + 0.5 * (z == 0)))


def few_shot(phi_stmt: np.ndarray, users: list[data.BenchUser], w0: np.ndarray, prior_strength: float,
             shots: Sequence[int] = SHOTS, P: np.ndarray | None = None) -> dict[str, float]:
    """Mean held-out accuracy after fitting each user on its first N comparisons (prior N(w0, (lambda P)^-1),
    lambda = ``prior_strength``)."""
    acc: dict[str, list[float]] = {str(n): [] for n in shots}
    acc["global"] = []
    for u in users:
        a, e = np.array(u.adapt), np.array(u.eval)
        phi_a = phi_stmt[a[:, 0]] - phi_stmt[a[:, 1]]  # (N, K)
        phi_e = phi_stmt[e[:, 0]] - phi_stmt[e[:, 1]]  # (100, K)
        acc["global"].append(pair_accuracy(phi_e @ w0))
        for n in shots:
            w, _ = fit_map(phi_a[:n], w0, prior_strength, P)
            acc[str(n)].append(pair_accuracy(phi_e @ w))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def choose_prior_strength(phi_stmt: np.ndarray, st: data.Statements, w0: np.ndarray, n_users: int = 100,
                  P: np.ndarray | None = None) -> float:
    """The prior strength (lambda) with the best mean few-shot accuracy on validation users (a seed apart
    from test)."""
    val = data.persona_benchmark(st, n_users=n_users, seed=777)
    scores = {prior_strength: np.mean([v for k, v in few_shot(phi_stmt, val, w0, prior_strength, P=P).items()
                                       if k != "global"])
              for prior_strength in PRIOR_STRENGTH_GRID}
    log.info("lambda grid: %s", {k: round(v, 4) for k, v in scores.items()})
    return float(max(scores, key=lambda prior_strength: scores[prior_strength]))


def interpretability(phi_stmt: np.ndarray, gates: np.ndarray, st: data.Statements) -> dict[str, Any]:
    """Per axis: the expert whose gated reward best tracks the +/-1 labels, and its routing share."""
    idx = data.statement_split(st, "test")
    rows: list[dict[str, Any]] = []
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
    """argmin_w  -sum log sigmoid(y * X w) + l2 * ||w||^2: the runtime's one penalised logistic fit
    (``moerm_lite.personalize.penalized_logistic``, which a user's residual uses too)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)  # (N, F), (N,)
    return penalized_logistic(y[:, None] * X, np.zeros(len(X)), l2)  # (F,)


def probe_ceiling(emb: np.ndarray, st: data.Statements, users: list[data.BenchUser]) -> dict[str, float]:
    """Supervised ceiling: per-axis logistic probes on frozen embeddings as the features.

    Fitted like the model (MAP, identity prior around 0), with its own lambda from validation users.
    """
    train = data.statement_split(st, "train")
    feats = np.zeros((len(st.text), len(st.axes)))
    X = np.hstack([emb, np.ones((len(emb), 1))])
    for a in range(len(st.axes)):
        sel = train[st.axis[train] == a]
        w = logistic_fit(X[sel], st.y[sel].astype(float), l2=5e-3)
        feats[st.axis == a, a] = np.tanh(X[st.axis == a] @ w / 4)  # probe output on its own axis
    w0 = np.zeros(len(st.axes))
    prior_strength = choose_prior_strength(feats, st, w0)
    return {**few_shot(feats, users, w0, prior_strength), "prior_strength": prior_strength}


def pair_probe(features: Any, train: list[data.Record], test: list[data.Record], l2: float = 10.0) -> float:
    """Held-out accuracy of one L2 logistic regression on frozen feature differences (chosen - rejected).

    The ceiling of a frozen backbone for a population score on that data.
    """
    def diff(recs: list[data.Record]) -> np.ndarray:
        return (features([(r["prompt"], r["chosen"]) for r in recs])
                - features([(r["prompt"], r["rejected"]) for r in recs])).astype(np.float64)

    X, Xt = diff(train), diff(test)
    return pair_accuracy(Xt @ logistic_fit(X, np.ones(len(X)), l2))


def records_phi(fz: Featurizer, recs: list[data.Record]) -> np.ndarray:
    """phi, the chosen-minus-rejected expert features (N, K), of comparison records through ``fz``."""
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    g, r = fz.outputs(pairs)
    f = expert_features(g, r)
    return f[: len(recs)] - f[len(recs):]  # (N, K)


def relabeled_hh(fz: Featurizer, w0: np.ndarray, prior_strength: float, reps: int = 50, seed: int = 0,
                 P: np.ndarray | None = None) -> dict[str, Any]:
    """Two annotator objectives as two users: global, oracle (fit on all) and few-shot N = 10/50."""
    recs = data.load_relabeled_hh()
    phi = records_phi(fz, recs)
    users = np.array([r["user_id"] for r in recs])
    rng = np.random.default_rng(seed)
    res: dict[str, Any] = {"global": pair_accuracy(phi @ w0), "per_objective": {}}
    for obj in ("helpful", "harmless"):
        X = phi[users == obj]  # (N_obj, K)
        w_all, _ = fit_map(X, w0, prior_strength, P)
        row = {"global": pair_accuracy(X @ w0), "oracle": pair_accuracy(X @ w_all)}
        for n in (10, 50):
            accs = []
            for _ in range(reps):
                perm = rng.permutation(len(X))
                w, _ = fit_map(X[perm[:n]], w0, prior_strength, P)
                accs.append(pair_accuracy(X[perm[n:]] @ w))
            row[str(n)] = float(np.mean(accs))
        res["per_objective"][obj] = row
    for key in ("10", "50", "oracle"):
        res[key] = float(np.mean([res["per_objective"][o][key] for o in ("helpful", "harmless")]))
    return res


def relabeled_probe(features: Any) -> dict[str, float]:
    """Per objective, a logistic probe on frozen feature differences trained on half of its pairs (split by
    prompt) and tested on the other half: how far a frozen backbone can separate each objective at all."""
    recs = data.load_relabeled_hh()
    out = {}
    for obj in ("helpful", "harmless"):
        mine = [r for r in recs if r["user_id"] == obj]
        half = [data.bucket(r["prompt"], "relabeled-probe") < 0.5 for r in mine]
        out[obj] = pair_probe(features, [r for r, h in zip(mine, half) if h],
                              [r for r, h in zip(mine, half) if not h])
    out["mean"] = float(np.mean([out["helpful"], out["harmless"]]))
    return out


SOURCE_ORDER = ("hh_helpful", "hh_harmless", "finegrained_qa", "topical_chat")  # ties in names go to the first


def source_gates(fz: Featurizer, persona_gates: np.ndarray) -> dict[str, np.ndarray]:
    """Dense gates (N, K) per source: held-out chosen replies of the real sets, and the persona statements."""
    out = {name: fz.outputs([(x["prompt"], x["chosen"]) for x in data.REAL_LOADERS[name](split="test")])[0]
           for name in SOURCE_ORDER}
    out["persona"] = persona_gates
    return out


# An expert named after a source is one that source's inputs route to: the words say which replies it judges
# (its reward's sign is arbitrary, so "helpfulness" would promise a direction the weight may reverse).
SOURCE_WORDS = {"hh_harmless": "red-team conversations (HH-RLHF harmless)",
                "hh_helpful": "assistant conversations (HH-RLHF helpful)",
                "finegrained_qa": "factual QA answers", "topical_chat": "chit-chat replies", "persona": "persona statements"}

READOUT_NAME = "helpful, on-topic answers"  # what the helpfulness read-out rewards (moerm_build.train.readout)


def readout_names(info: dict[str, Any] | None, n_readout: int) -> list[str]:
    """What each of the last ``n_readout`` experts rewards, in words, from a run's read-out record
    (``ckpt["readout"]``, the folder's ``training.readout``): the helpfulness read-out, then one per attribute."""
    info = info or {}
    attrs = (info.get("attribute_readouts") or {}).get("attributes", [])
    names = [READOUT_NAME] * (n_readout - len(attrs)) + [ATTRIBUTE_WORDS[a][0] for a in attrs]
    return names[-n_readout:] if n_readout else []


def name_experts(phi_stmt: np.ndarray, st: data.Statements, source_gates: dict[str, np.ndarray],
                 attr_corr: np.ndarray | None = None, attributes: Sequence[str] = (), n_shared: int = 0,
                 readout: Sequence[str] = ()) -> list[str]:
    """A name per expert from data, in words: its persona axis and stance, else the text attribute its
    gated reward tracks, else the source it mostly serves; ``unused`` if no held-out input routes to it.
    The last ``len(readout)`` are read-outs (``moerm_build.train.readout``) named ``readout``; a trained expert that
    tracks the same attribute as one of them gets the number (``longer replies 2``)."""
    K, R = phi_stmt.shape[1], len(readout)
    idx = data.statement_split(st, "test")
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
        a_best = int(np.argmax(np.abs(attr_corr[k]))) if attr_corr is not None else -1
        shared = k >= K - n_shared  # always active, sees text statistics only: never a persona expert
        if k >= K - R:
            names.append(readout[k - (K - R)])
        elif abs(best_c) >= 0.5 and not shared:
            names.append(f"{best.replace('-', ' ')} ({'for' if best_c > 0 else 'against'})")
        elif max(share.values()) == 0:
            names.append("unused")  # no held-out input of any source routes to it
        elif attr_corr is not None and a_best >= 0 and abs(attr_corr[k, a_best]) >= 0.3:
            names.append(ATTRIBUTE_WORDS[attributes[a_best]][0 if attr_corr[k, a_best] > 0 else 1])
        else:
            real = {s: v for s, v in share.items() if s != "persona"}
            top = max(real, key=lambda s: real[s])
            names.append(SOURCE_WORDS.get(top, top))
    seen: dict[str, int] = {}
    out = [""] * K
    for k in [*range(K - R, K), *range(K - R)]:  # the read-outs keep their plain names
        seen[names[k]] = seen.get(names[k], 0) + 1
        out[k] = names[k] if seen[names[k]] == 1 else f"{names[k]} {seen[names[k]]}"
    return out


def choose_prior_strength_joint(phi_stmt: np.ndarray, st: data.Statements, ap: dict[str, Any], w0: np.ndarray,
                        P: np.ndarray | None) -> tuple[float, dict[float, float]]:
    """The prior strength with the best mean few-shot accuracy over persona and attribute validation users
    (seeds apart from the test users)."""
    from moerm_build.data.attributes import attribute_benchmark

    val_p = data.persona_benchmark(st, n_users=100, seed=777)
    val_a = attribute_benchmark(ap["pool"], n_users=100, seed=778)
    scores = {}
    for prior_strength in PRIOR_STRENGTH_GRID:
        p = [v for k, v in few_shot(phi_stmt, val_p, w0, prior_strength, P=P).items() if k != "global"]
        a = [v for k, v in few_shot(ap["phi"], val_a, w0, prior_strength, P=P).items() if k != "global"]
        scores[prior_strength] = float(np.mean(p) + np.mean(a)) / 2
    log.info("lambda grid: %s", {k: round(v, 4) for k, v in scores.items()})
    return float(max(scores, key=lambda prior_strength: scores[prior_strength])), scores
