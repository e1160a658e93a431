"""Evaluate a checkpoint (torch) or a model folder (the ONNX runtime) on every benchmark: one report.

``evaluate`` runs the persona benchmark, the real-text suite (``moerm_build.evaluate.real_eval``) and the
expert naming on one featurizer; ``EvalReport`` is what it returns and what the build adds, as the model
card (``moerm_build.release.card``) reads it.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from moerm_lite.head import expert_features

from moerm_build import data
from moerm_build.data.attributes import ATTRIBUTES
from moerm_build.evaluate import real_eval as R
from moerm_build.evaluate.metrics import (Featurizer, choose_prior_strength, choose_prior_strength_joint, few_shot,
                                          interpretability, name_experts, probe_ceiling, relabeled_hh,
                                          relabeled_probe, source_gates)


class EvalReport(TypedDict, total=False):
    """What ``evaluate`` measures (and what ``moerm_build.release.pipeline`` adds), as the card reads it.

    JSON-ready; every part is optional because a report may come from a partial evaluation.
    """

    prior: str  # "identity" or "training users"
    prior_strength: float  # lambda chosen on validation users
    residual_strength: float | str  # the residual the users' default rows fit (the folder's recommended one)
    residual_prior: dict[str, float] | None  # and its prior per block of the pair features (None: none)
    prior_strength_grid: dict[float, float]
    persona_users: dict[str, int]  # {"users", "heldout_per_user"}
    persona: dict[str, float]  # few-shot accuracy: "global", "5", "10", "20", "50"
    persona_residual: dict[str, float]  # the same with the opt-in residual (moerm_build.evaluate.real_eval)
    persona_identity_prior: dict[str, float]  # the same with P = I
    interpretability: dict[str, Any]
    probe_ceiling: dict[str, Any]
    relabeled_hh_probe: dict[str, float]
    relabeled_hh: dict[str, Any]
    sanity: dict[str, Any]  # moerm_build.evaluate.real_eval.sanity
    population: dict[str, Any]  # moerm_build.evaluate.real_eval.population
    attribute_users: dict[str, Any]
    dsp: dict[str, Any]
    attribute_correlations: list[list[float]]
    expert_names: list[str]
    routing_share_by_source: dict[str, list[float]]
    # added by the build script
    parity: dict[str, Any]
    quant_variants: dict[str, Any]
    torch: dict[str, Any]
    dense: dict[str, Any]
    expert_names_trained: list[str]
    timings: dict[str, float]
    active: dict[str, Any]
    expert_cards: list[dict[str, Any]]
    robustness: dict[str, Any]  # moerm_build.evaluate.robustness.report: degradation families, everyday requests, hacking
    tastes: dict[str, Any]  # moerm_build.evaluate.real_eval.taste_users: taste families no build trained on
    machine: dict[str, Any]  # where it was measured: {"cpu", "cores", "gpu"} (moerm_build.release.pipeline)


def evaluate(fz: Featurizer, w0: np.ndarray, *, prior_strength: float | None = None, n_users: int = 200,
             with_probes: bool = False, real_text: bool = True,
             residual_strength: float | str = R.BUILD_RESIDUAL,
             residual_prior: dict[str, float] | None = R.BUILD_RESIDUAL_PRIOR) -> EvalReport:
    """Every metric for one featurizer: persona-16, the real-text suite (``moerm_build.evaluate.real_eval``), names.
    The users' default rows fit the residual ``residual_strength`` under ``residual_prior`` (a folder's
    ``recommended_residual_strength`` and ``recommended_residual_prior``; a new build's by default), which the
    report records for the folder's config."""
    st = data.load_persona()
    g, r, X_stmt = fz.outputs_and_features([("", s) for s in st.text])  # (S, K), (S, K), (S, F)
    phi_stmt = expert_features(g, r)  # (S, K)
    P = fz.prior_precision
    ap = R.attribute_pool(fz, with_probe=with_probes) if real_text else None
    res: EvalReport = {"prior": "identity" if P is None else "training users"}
    if prior_strength is None:
        if ap is not None:
            prior_strength, res["prior_strength_grid"] = choose_prior_strength_joint(phi_stmt, st, ap, w0, P)
        else:
            prior_strength = choose_prior_strength(phi_stmt, st, w0, P=P)
    res["prior_strength"] = prior_strength
    res["residual_strength"] = residual_strength
    res["residual_prior"] = None if residual_prior is None else dict(residual_prior)
    users = data.persona_benchmark(st, n_users=n_users)
    res["persona_users"] = {"users": len(users), "heldout_per_user": len(users[0].eval) if users else 0}
    res["persona"] = few_shot(phi_stmt, users, w0, prior_strength, P=P)
    if real_text:
        res["persona_residual"] = R.few_shot_residual(phi_stmt, X_stmt, users, w0, prior_strength, P,
                                                      residual_strength,
                                                      residual_prior=R.residual_blocks(residual_prior,
                                                                                       fz.feature_blocks))
    res["interpretability"] = interpretability(phi_stmt, g, st)
    if with_probes:
        res["probe_ceiling"] = probe_ceiling(X_stmt, st, users)
        res["relabeled_hh_probe"] = relabeled_probe(fz.features)
    res["relabeled_hh"] = relabeled_hh(fz, w0, prior_strength, P=P)
    attr_corr = None
    if ap is not None:
        res["sanity"] = R.sanity(fz, w0)
        res["population"] = R.population(fz, w0)
        res["attribute_users"] = R.attribute_users(ap, w0, prior_strength, P, residual_strength=residual_strength,
                                                   residual_prior=residual_prior)
        res["dsp"] = R.dsp_users(fz, w0, prior_strength, P, residual_strength=residual_strength,
                                 residual_prior=residual_prior)
        attr_corr = R.attribute_correlations(ap["phi"], ap["pool"].z)  # (K, A)
        res["attribute_correlations"] = np.round(attr_corr, 3).tolist()
    src_gates = source_gates(fz, g)
    res["expert_names"] = name_experts(phi_stmt, st, src_gates, attr_corr, ATTRIBUTES, fz.n_shared,
                                       fz.readout_names)
    res["routing_share_by_source"] = {s: np.round((v > 0).mean(0), 4).tolist() for s, v in src_gates.items()}
    return res
