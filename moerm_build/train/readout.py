"""Read-outs: always-active experts, each a linear reward on every pair feature, fitted after training.
One is fitted on the population's helpfulness data (below); ``add_attribute_readouts`` adds one per text
attribute of ``moerm_build.data.attributes`` (at the end of this file).

Why: the trained experts do not compute what HH-RLHF helpful raters rewarded (docs/decisions/population-bound.md, "What
bounds the population score"), while a linear read-out of the same frozen features does. Shared experts
that see the embeddings *during* training learned persona topics instead; fitted afterwards, on
population records only (no simulated users), the read-out has nothing else to learn.

    h  = (x - mean) / std          (B, F)   the head's standardised pair features
    a  = h . u                     (B,)
    r  = has_prompt * c * tanh(a / c)   (B,)   the head's reward bound, as for every expert

``u`` maximises the Bradley-Terry likelihood of the read-out records on top of the trained population
score (``w0 . pi * r`` of the other experts, held fixed) with an L2 penalty on its weights in the
features' own units (``TrainConfig.readout_l2``).
The read-out joins the head as its last shared expert with population weight 1:
``W1[:, 0] = u``, ``W1[:, 1] = -u``, ``w2 = (1, -1, 0, ...)``, so ``relu(a) - relu(-a) = a`` and the ONNX
graph and the runtime compute it like any other expert. Users may re-weight it like any other.

It was fitted on replies to prompts only, so it is silent (0) on a text without a prompt (persona
statements, a feed item scored alone): both hidden units also get ``GATE_MARGIN * (has_prompt - 1)``, which
is 0 with a prompt and switches both off without one. Measured before the gate, the read-out's guesses on
statements cost persona users 3 points at N = 5. (The gate's weight dominates its hidden units' column, so
a per-channel int8 scale would round ``u`` to 0: ``build_head_graph`` keeps shared experts fp16 with int8.)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from moerm_lite.features import SURFACE

from moerm_build.model import MoEHead

log = logging.getLogger("moerm_build")
GATE_MARGIN = 1000.0  # far above |h . u| of any text, so a prompt-less input switches both hidden units off


def source_family(source: str) -> str:
    """A record's source as ``TrainConfig.readout_sources`` names it (``contrast:offtopic``: ``contrast``)."""
    return source.split(":", 1)[0]


def fit_linear_readout(h_chosen: np.ndarray, h_rejected: np.ndarray, offset: np.ndarray, l2: float,
                       bound: float, std: np.ndarray | None = None, held: np.ndarray | None = None,
                       start: np.ndarray | None = None) -> np.ndarray:
    """u (F,) = argmin  -sum_i log sigmoid(offset_i + r(h_chosen_i) - r(h_rejected_i))  +  l2 ||u / std||^2,
    r(h) = c tanh(h . u / c) (c = ``bound``; 0: r = h . u); L-BFGS in float64, analytic gradient.

    With ``std`` (F,), the standardisation of ``h``, the penalty is on the weights of the features in their
    own units (``u / std``): standardised, the many embedding directions of tiny spread would weigh as
    much as the few that carry most of it (measured: noisier held-out accuracy, experiments/readout_scan.py).
    The fit starts from ``start`` (F,) (None: 0); the weights where ``held`` (F,) is True stay at it.
    """
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    s = np.ones(np.shape(h_chosen)[1]) if std is None else np.asarray(std, np.float64)  # (F,)
    Hc, Hr = np.asarray(h_chosen, np.float64) * s, np.asarray(h_rejected, np.float64) * s  # (N, F) each
    off = np.asarray(offset, np.float64)  # (N,)

    def reward(H: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = H @ u  # (N,)
        if bound <= 0:
            return a, np.ones_like(a)
        t = np.tanh(a / bound)
        return bound * t, 1.0 - t * t  # r (N,), dr/da (N,)

    def loss_grad(u: np.ndarray) -> tuple[float, np.ndarray]:
        (rc, gc), (rr, gr) = reward(Hc, u), reward(Hr, u)
        z = off + rc - rr  # (N,)
        e = expit(-z)  # (N,)
        grad = -((e * gc) @ Hc - (e * gr) @ Hr) + 2 * l2 * u  # (F,)
        return float(-log_expit(z).sum() + l2 * u @ u), grad

    v0 = np.zeros(Hc.shape[1]) if start is None else np.asarray(start, np.float64) / s  # (F,)
    bounds = None if held is None else [(x, x) if h else (None, None) for x, h in zip(v0, held)]
    v = minimize(loss_grad, v0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000}).x
    return v * s  # (F,): h . u = (h * s) . v


def has_prompt_column(n_features: int) -> int:
    """Where ``has_prompt`` sits in the pair features (``moerm_lite.features``)."""
    return n_features - len(SURFACE) + SURFACE.index("has_prompt")


def readout_expert(u: np.ndarray, feat_mean: np.ndarray, feat_std: np.ndarray, expert_hidden: int,
                   bias: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The read-out ``a = h . u + bias`` as one expert's layers, gated by ``has_prompt``, float64:
    W1 (F, D), b1 (D,), w2 (D,), so that ``w2 . relu(h W1 + b1) = a`` with a prompt and 0 without one."""
    F, D = len(u), expert_hidden
    if D < 2:
        raise ValueError("a read-out expert needs expert_hidden >= 2")
    g = has_prompt_column(F)
    m, s = float(feat_mean[g]), float(feat_std[g])
    # GATE_MARGIN * (has_prompt - 1) = coef * h_g + bias with h_g = (has_prompt - m) / s as the graph
    # computes it: 0 with a prompt. coef is exact in fp16; u's own weight on the column, constant with a
    # prompt, moves into the biases so that the column holds coef alone.
    coef = float(np.float16(GATE_MARGIN * s))
    h1 = float((np.float32(1.0) - np.float32(m)) / np.float32(s))  # h_g with a prompt
    u = np.asarray(u, dtype=np.float64)  # (F,)
    w1 = np.zeros((F, D))  # (F, D)
    w1[:, 0], w1[:, 1] = u, -u
    w1[g, :2] = coef
    b1 = np.zeros(D)  # (D,)
    b1[0], b1[1] = -coef * h1 + u[g] * h1 + bias, -coef * h1 - u[g] * h1 - bias
    w2 = np.zeros(D)  # (D,)
    w2[0], w2[1] = 1.0, -1.0
    return w1, b1, w2


def append_readout(head: MoEHead, u: np.ndarray, bias: float = 0.0, weight: float = 1.0,
                   variance: float = 0.0) -> MoEHead:
    """A new head: ``head`` with the read-out ``a = h . u + bias`` (``u`` (F,)) appended as its last shared
    expert (gated by ``has_prompt``), population weight ``weight``, prior ``variance`` (0: the median of the
    trained experts', ``MoEHead.prior_precision``) and zero offsets for the training users; the others
    unchanged."""
    a = head.args
    w1_np, b1_np, w2_np = readout_expert(u, head.feat_mean.double().numpy(), head.feat_std.double().numpy(),
                                         a.expert_hidden, bias)
    variances = [*a.readout_variance, *[0.0] * (a.n_readout - len(a.readout_variance)), float(variance)]
    new = MoEHead(replace(a, n_experts=a.n_experts + 1, n_shared=a.n_shared + 1, n_readout=a.n_readout + 1,
                          readout_variance=variances))
    sd = {k: v.detach().clone() for k, v in head.state_dict().items()}
    w1 = torch.as_tensor(w1_np)[None]  # (1, F, D)
    b1 = torch.as_tensor(b1_np)[None]  # (1, D)
    w2 = torch.as_tensor(w2_np, dtype=torch.float32)[None]  # (1, D)
    sd["w1"] = torch.cat([sd["w1"], w1.float()])  # (K + 1, F, D)
    sd["b1"] = torch.cat([sd["b1"], b1.float()])
    sd["w2"] = torch.cat([sd["w2"], w2])
    sd["b2"] = torch.cat([sd["b2"], torch.zeros(1)])
    sd["w0"] = torch.cat([sd["w0"], torch.full((1,), float(weight))])
    sd["user_weights"] = torch.cat([sd["user_weights"], torch.zeros(len(sd["user_weights"]), 1)], 1)
    sd["type_weights"] = torch.cat([sd["type_weights"], torch.zeros(len(sd["type_weights"]), 1)], 1)
    sd["w1_mask"] = new.w1_mask
    new.load_state_dict(sd)
    new.eval()
    return new


def readout_records(recs: Sequence[dict[str, Any]], sources: Sequence[str]) -> list[dict[str, Any]]:
    """The population records (no ``user_id``) of the named source families that have a prompt (the
    read-out is silent without one, so such a record would teach it nothing it applies)."""
    return [r for r in recs if r.get("user_id") is None and str(r.get("prompt", "")).strip()
            and source_family(str(r.get("source", ""))) in sources]


def readout_inputs(head: MoEHead, recs: Sequence[dict[str, Any]],
                   features: Callable[[list[tuple[str, str]]], np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the fit needs of records: standardised features of chosen and rejected (N, F) each, and the
    trained population score's margin (N,) (``w0 . pi * r`` of chosen minus rejected)."""
    Xc = features([(r["prompt"], r["chosen"]) for r in recs])  # (N, F)
    Xr = features([(r["prompt"], r["rejected"]) for r in recs])
    with torch.no_grad():
        tc, tr = torch.as_tensor(Xc, dtype=torch.float32), torch.as_tensor(Xr, dtype=torch.float32)
        Hc = head.standardize(tc).double().numpy()  # (N, F)
        Hr = head.standardize(tr).double().numpy()
        offset = (head.score(tc, head.w0) - head.score(tr, head.w0)).double().numpy()  # (N,)
    return Hc, Hr, offset


def readout_reward(h: np.ndarray, u: np.ndarray, bound: float) -> np.ndarray:
    """The read-out's reward (N,) of standardised features h (N, F): ``c tanh(h . u / c)`` (c = ``bound``;
    0: ``h . u``), as the head computes it."""
    a = h @ u  # (N,)
    return bound * np.tanh(a / bound) if bound > 0 else a


def readout_margin(h_chosen: np.ndarray, h_rejected: np.ndarray, offset: np.ndarray, u: np.ndarray,
                   bound: float) -> np.ndarray:
    """Margins (N,) of a head with the read-out ``u`` (F,) appended: ``offset`` (the head's own margin) plus
    the read-out's reward (``readout_reward``) of chosen minus rejected."""
    return offset + readout_reward(h_chosen, u, bound) - readout_reward(h_rejected, u, bound)


def fit_for_head(head: MoEHead, h_chosen: np.ndarray, h_rejected: np.ndarray, offset: np.ndarray,
                 l2: float, held: np.ndarray | None = None, start: np.ndarray | None = None) -> np.ndarray:
    """``fit_linear_readout`` as ``head`` needs it: its reward bound, the penalty in its features' units."""
    return fit_linear_readout(h_chosen, h_rejected, offset, l2, float(head.args.reward_bound),
                              head.feat_std.double().numpy(), held, start)


def add_readout(head: MoEHead, recs: Sequence[dict[str, Any]], sources: Sequence[str], l2: float,
                features: Callable[[list[tuple[str, str]]], np.ndarray]
                ) -> tuple[MoEHead, dict[str, Any] | None]:
    """Fit the read-out on ``recs``' population records of ``sources`` and append it to ``head``;
    ``features`` maps (prompt, response) pairs to pair features (N, F). Returns the new head and what was
    fitted (``None`` and the head unchanged when there is no such record).

    ``l2`` is fixed, not chosen on a held-out share of the records: the head was trained on all of them,
    so its margin on any share is in-sample (about 99.9% right) and hides what the read-out adds.
    ``experiments/readout_scan.py`` measures a range of values on the held-out test splits instead.
    """
    recs = readout_records(recs, sources)
    if not recs:
        return head, None
    Hc, Hr, offset = readout_inputs(head, recs, features)
    u = fit_for_head(head, Hc, Hr, offset, l2)
    counts = dict(Counter(source_family(r["source"]) for r in recs))
    log.info("read-out: %s records, L2 %g, |u| %.3f", counts, l2, float(np.linalg.norm(u)))
    return append_readout(head, u), {"sources": list(sources), "records": counts, "l2": float(l2)}


def without_readout(head: MoEHead) -> MoEHead:
    """The head as trained: ``head`` with its read-out experts (the last ``n_readout``) removed."""
    a, R = head.args, head.args.n_readout
    if not R:
        return head
    new = MoEHead(replace(a, n_experts=a.n_experts - R, n_shared=a.n_shared - R, n_readout=0,
                          readout_variance=[]))
    sd = {k: v.detach().clone() for k, v in head.state_dict().items()}
    for k in ("w1", "b1", "w2", "b2", "w0"):
        sd[k] = sd[k][:-R]
    for k in ("user_weights", "type_weights"):
        sd[k] = sd[k][:, :-R]
    sd["w1_mask"] = new.w1_mask
    new.load_state_dict(sd)
    new.eval()
    return new


# ------------------------------------------------------------------------ attribute read-outs
ATTRIBUTE_ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4)  # ridge penalties tried per attribute (standardised features)
ATTRIBUTE_VARIANCE = 1.0  # their prior variance (TrainConfig.attribute_readout_variance; docs/decisions/attribute-readouts.md)


def fit_ridge(H: np.ndarray, y: np.ndarray, alphas: Sequence[float] = ATTRIBUTE_ALPHAS, seed: int = 0
              ) -> tuple[np.ndarray, float, float]:
    """Ridge regression of ``y`` (N,) on standardised features ``H`` (N, F), its penalty chosen on a fifth
    of the rows (fixed seed) and then refitted on all of them: ``(u (F,), bias, alpha)``."""
    H, y = np.asarray(H, np.float64), np.asarray(y, np.float64)

    def fit(rows: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
        Hr, yr = H[rows], y[rows]
        mu = Hr.mean(0)  # (F,)
        Z = Hr - mu  # (n, F)
        u = np.linalg.solve(Z.T @ Z + alpha * np.eye(H.shape[1]), Z.T @ (yr - yr.mean()))  # (F,)
        return u, float(yr.mean() - mu @ u)

    val = np.random.default_rng(seed).random(len(y)) < 0.2  # (N,)
    if val.all() or not val.any():
        raise ValueError(f"fit_ridge: {len(y)} rows are too few to hold a fifth out")

    def val_error(alpha: float) -> float:
        u, b = fit(~val, alpha)
        return float(np.mean((H[val] @ u + b - y[val]) ** 2))

    best = min(alphas, key=val_error)
    u, b = fit(np.ones(len(y), bool), best)
    return u, b, float(best)


def add_attribute_readouts(head: MoEHead, pool: Any, features: Callable[[list[tuple[str, str]]], np.ndarray],
                           variance: float = ATTRIBUTE_VARIANCE) -> tuple[MoEHead, dict[str, Any] | None]:
    """Append one read-out per text attribute of ``moerm_build.data.attributes``: a ridge regression of the reply's
    standardised attribute on its pair features, fitted on ``pool`` (an ``attributes.ResponsePool`` of
    training replies to prompts). Population weight 0 (the population has no taste for length or tone),
    prior ``variance``, gated by ``has_prompt`` like the helpfulness read-out. A user who cares about one
    attribute then needs one weight, not a mix of experts trained for other things.

    Returns the new head and what was fitted (``None`` and the head unchanged without such replies)."""
    from moerm_build.data.attributes import ATTRIBUTES

    rows = [i for i, g in enumerate(pool.group) if str(pool.prompts[g]).strip()]
    if len(rows) < 10:
        return head, None
    X = features([(pool.prompts[pool.group[i]], pool.responses[i]) for i in rows])  # (N, F)
    with torch.no_grad():
        H = head.standardize(torch.as_tensor(X, dtype=torch.float32)).double().numpy()  # (N, F)
    alphas, r2 = {}, {}
    for a, name in enumerate(ATTRIBUTES):
        y = pool.z[rows, a]  # (N,)
        u, b, alpha = fit_ridge(H, y)
        head = append_readout(head, u, bias=b, weight=0.0, variance=variance)
        alphas[name] = alpha
        r2[name] = round(float(1 - np.mean((H @ u + b - y) ** 2) / max(float(y.var()), 1e-12)), 3)
    log.info("attribute read-outs on %d replies: in-sample R^2 %s", len(rows), r2)
    return head, {"attributes": list(ATTRIBUTES), "replies": len(rows), "alphas": alphas,
                  "variance": float(variance), "r2_in_sample": r2}

