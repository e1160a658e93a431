"""Which residual a new user gets by default (``fit_user(..., residual_strength=...)``): few-shot accuracy
of the expert weights alone, of fixed residual strengths, and of strengths chosen per user (``"auto"``,
``"evidence"``),
constrained by the tastes the experts know and chosen family-out on tastes no build trained on.

Feeds docs/decisions/residual.md.

    python experiments/residual_scan.py                      # the shipped model, ~15 minutes on 2 CPU cores
    python experiments/residual_scan.py --model models/mine
    python experiments/residual_scan.py --spread             # and the residual under a spread-shaped prior
    python experiments/residual_scan.py --card-users evidence --card-prior relevance=0.1,statistics=3
                                                             # the card's taste and DSP users, this default
    python experiments/residual_scan.py --probes             # the frozen probe on the same users, each prior
    python experiments/residual_scan.py --quality --users 30 # bad replies under the users' profiles, ~15 min

- **Constraining users** (what a default must not hurt: tastes the experts were trained on; seeds apart
  from the card's test users, as the prior strength is chosen): persona-16 users and attribute users (1 and
  2-3 attributes) on held-out prompts. A default may lose at most half a point against the weights alone at
  every one of these groups and N = 5 / 10 / 20 / 50.
- **Unseen tastes** (no build trains on them): the five taste families (``moerm_build.data.tastes``; seeds
  apart from the card's) and the four DSP domain users (evaluation only; fitted on comparisons from one half
  of the instructions, scored on all of the other half; 20 draws each, the N comparisons of a draw the first
  N of one random order). The choice is made family-out: for each of these six groups, the fit within the
  constraint with the best mean gain over the *other* five, scored on the one left out.

Every fit is the runtime's own (``UserProfile.fit``) at the model's prior strength ("auto by evidence":
``residual_strength="evidence"``), except "auto over none/10/30/100" and "evidence, none/10/30/100", the
runtime's per-user choices (``choose_residual``) over a shorter grid, and "evidence, prior and residual", which
also chooses the prior strength (the model's times 1/3, 1 or 3) by the evidence (``log_evidence``). The rows
"evidence, relevance 0.1, statistics 3" and the like fit the residual under a prior scale per block of the pair
features (``PRIORS``; ``fit_user(residual_prior=...)``). ``--seed``
draws other users (the tables of residual.md: 0 and 1000). ``--quality`` asks whether a user's scores still
know a bad reply: the sanity suite and the everyday requests scored under the same users' profiles (a few
fits, unbounded, with the taste bounded, ``bounded_scorer``, or clipped at the user's own range, ``taste_range``;
and with anchor comparisons,
``anchor_differences``, appended or as a prior, ``quality_prior``). Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import attribute_benchmark
from moerm_build.data.tastes import TASTE_FAMILIES, taste_benchmark, taste_pool
from moerm_build.evaluate.metrics import RuntimeFeaturizer, pair_accuracy
from moerm_build.data.contrast import real_answers
from moerm_build.data.degrade import benign_degradation_records
from moerm_build.evaluate.real_eval import (BUILD_RESIDUAL_PRIOR, SHOTS, attribute_pool, dsp_features, dsp_pool,
                                           dsp_users, fit_user_terms, probe_few_shot, residual_blocks,
                                           sanity_records, taste_users, train_pool_spread)
from moerm_build.evaluate.robustness import everyday_records, pair_items, pair_outputs
from moerm_lite.cli import residual_prior as cli_prior
from moerm_lite.folder import residual_setting
from moerm_lite.guard import guarded_margins
from moerm_lite.head import expert_features
from moerm_lite.model import DEFAULT_MODEL
from moerm_lite.personalize import (RESIDUAL_GRID, choose_residual, fit_map, fit_residual, log_evidence,
                                    prior_scales, residual_scale)

ROOT = Path(__file__).resolve().parents[1]
STRENGTHS = (3.0, 10.0, 30.0, 100.0, 300.0)
SHORT_GRID = (None, 10.0, 30.0, 100.0)
PRIORS: tuple[dict[str, float], ...] = (  # the residual's prior per block of the pair features (evidence)
    {"relevance": 0.3}, {"statistics": 3.0}, {"relevance": 0.3, "statistics": 3.0},
    {"relevance": 0.1, "statistics": 3.0}, {"relevance": 0.3, "statistics": 5.0})
PRIOR_FACTORS = (1 / 3, 1.0, 3.0)  # "evidence, prior and residual": the model's prior strength times these
TOLERANCE = 0.5  # points a default may lose against the weights alone, on any constraining group and N
BOUNDS = (None, 4.0, 2.0, 1.0)  # --quality: a taste's bound in population-score spreads (None: unbounded)
GUARDS = (0.95, 0.9, 0.8)  # --quality: rank(..., population_guard=...) of each pair (moerm_lite.guard)
RANGES = (1.0, 0.5)  # --quality: a pair's taste margin clipped at these times its range (taste_range)
QUALITY_SHOTS = (10, 50)  # --quality: the N whose profiles score the sanity suite and the everyday requests
ANCHOR_FAMILIES = ("word_shuffle", "sentence_shuffle", "repetition", "echo", "neighbour", "negation",
                   "entity_swap", "padding", "mixed_language")  # --quality's anchors: in neither suite
Fit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (phi (N, K), X (N, F)) -> (w, v)
Group = tuple[np.ndarray, np.ndarray, list]  # phi (R, K), X (R, F) of a pool's items, its users


def fits(w0: np.ndarray, lam: float, P: np.ndarray | None, blocks: dict[str, int],
         spread: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Fit]:
    """Every fit compared, by label. ``blocks``: the pair features' blocks (a featurizer's ``feature_blocks``),
    for the residual under a prior per block (``PRIORS``). ``spread`` (sd (F,), T (F, F): ``train_pool_spread``):
    also the residual fitted on ``(X / sd) @ T``, its prior favouring the directions the licensed training
    pool's pairs vary along."""
    def runtime(strength: float | str | None, prior: dict[str, float] | None = None) -> Fit:
        prior_blocks = residual_blocks(prior, blocks)
        return lambda phi, X: fit_user_terms(phi, X, w0, lam, P, strength, prior_blocks)

    def spread_prior(strength: float | str) -> Fit:
        assert spread is not None
        sd, T = spread

        def fit(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            w, v = fit_user_terms(phi, (X / sd) @ T, w0, lam, P, strength)
            return w, (T @ v) / sd  # (K,), (F,): the residual on X itself
        return fit

    def evidence_plain_or_spread(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The evidence chooses the strength and the residual's prior too: on X, or on the spread's space."""
        assert spread is not None
        sd, T = spread
        Xt = (X / sd) @ T  # (N, F)
        best = max(((log_evidence(phi, x, w0, lam, P, rho), -i, rho, k)
                    for k, x in enumerate((X, Xt)) for i, rho in enumerate(RESIDUAL_GRID)
                    if k == 0 or rho is not None), key=lambda t: t[:2])
        if best[3] == 0:
            return fit_user_terms(phi, X, w0, lam, P, best[2])
        w, v = fit_user_terms(phi, Xt, w0, lam, P, best[2])
        return w, (T @ v) / sd

    extra = {} if spread is None else {"residual 30, spread": spread_prior(30.0),
                                       "residual auto, spread": spread_prior("auto"),
                                       "evidence, spread": spread_prior("evidence"),
                                       "evidence, plain or spread": evidence_plain_or_spread}

    def short_auto(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, _ = fit_map(phi, w0, lam, P)
        _, v, _ = choose_residual(phi, X, w, lam, P, SHORT_GRID)
        return w, np.zeros(X.shape[1]) if v is None else v

    def evidence(grid: tuple[float | None, ...], factors: tuple[float, ...]) -> Fit:
        def fit(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            best = max(((log_evidence(phi, X, w0, lam * c, P, rho), -i, lam * c, rho)
                        for i, (c, rho) in enumerate((c, rho) for c in factors for rho in grid)),
                       key=lambda t: t[:2])
            return fit_user_terms(phi, X, w0, best[2], P, best[3])
        return fit

    def evidence_or_residual_alone(prior: dict[str, float] | None, min_n: int = 0) -> Fit:
        """The evidence also weighs a residual alone: the expert weights held at w0 (a probe around the
        population's scores), or no population term at all (the frozen probe's model); under ``prior``; from
        ``min_n`` comparisons (fewer: the evidence's choice of strength alone)."""
        prior_blocks = residual_blocks(prior, blocks)

        def fit(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if len(phi) < min_n:
                return fit_user_terms(phi, X, w0, lam, P, "evidence", prior_blocks)
            alone = (1.0, 3.0, 10.0, 30.0)
            scales = prior_scales(prior_blocks, X.shape[1])  # (F,) or None
            sc = residual_scale(X, scales)  # (F,)
            options = [(log_evidence(phi, X, w0, lam, P, rho, sc), -i, "experts", rho)
                       for i, rho in enumerate(RESIDUAL_GRID)]
            options += [(log_evidence(phi, X, w0, 1e12, P, rho, sc), -i, "w0", rho) for i, rho in enumerate(alone)]
            options += [(log_evidence(np.zeros_like(phi), X, w0, lam, P, rho, sc), -i, "nothing", rho)
                        for i, rho in enumerate(alone)]
            _, _, kind, rho = max(options, key=lambda t: t[:2])
            if kind == "experts":
                return fit_user_terms(phi, X, w0, lam, P, rho, prior_blocks)
            assert rho is not None
            base = w0 if kind == "w0" else np.zeros_like(w0)  # (K,)
            return base, fit_residual(X, phi @ base, rho, scales)
        return fit

    by_block = {f"evidence, {prior_label(p)}": runtime("evidence", p) for p in PRIORS}
    return {"weights only": runtime(None), **{f"residual {s:g}": runtime(s) for s in STRENGTHS},
            "residual auto": runtime("auto"), "auto over none/10/30/100": short_auto,
            "auto by evidence": runtime("evidence"), **by_block,
            f"residual 30, {prior_label(BUILD_RESIDUAL_PRIOR)}": runtime(30.0, BUILD_RESIDUAL_PRIOR),
            "evidence, none/10/30/100": evidence(SHORT_GRID, (1.0,)),
            "evidence, prior and residual": evidence(RESIDUAL_GRID, PRIOR_FACTORS),
            "evidence, or a residual alone": evidence_or_residual_alone(None),
            f"evidence, or a residual alone, {prior_label(BUILD_RESIDUAL_PRIOR)}":
                evidence_or_residual_alone(BUILD_RESIDUAL_PRIOR),
            f"the same from N = 20, {prior_label(BUILD_RESIDUAL_PRIOR)}":
                evidence_or_residual_alone(BUILD_RESIDUAL_PRIOR, 20), **extra}


def parse_prior(text: str) -> dict[str, float] | None:
    """``--card-prior``: ``none`` or ``relevance=0.1,statistics=3``, read as ``moerm-lite fit --residual-prior``."""
    prior = cli_prior(text)
    if isinstance(prior, str):
        raise argparse.ArgumentTypeError("--card-prior takes none or BLOCK=SCALE,..., not recommended")
    return prior


def prior_label(prior: dict[str, float] | None) -> str:
    """``relevance 0.1, statistics 3``: a residual prior per block as a row names it."""
    return "plain" if not prior else ", ".join(f"{name} {scale:g}" for name, scale in prior.items())


def scan(group: Group, table: dict[str, Fit]) -> dict[str, list[float]]:
    """Mean held-out accuracy (%) of each fit at each N of SHOTS, each user fitted on its first N."""
    phi, X, users = group
    acc: dict[str, list[list[float]]] = {name: [[] for _ in SHOTS] for name in table}
    for u in users:
        a, e = np.array(u.adapt), np.array(u.eval)
        pa, pe = phi[a[:, 0]] - phi[a[:, 1]], phi[e[:, 0]] - phi[e[:, 1]]  # (N, K), (E, K)
        xa, xe = X[a[:, 0]] - X[a[:, 1]], X[e[:, 0]] - X[e[:, 1]]  # (N, F), (E, F)
        for name, fit in table.items():
            for i, n in enumerate(SHOTS):
                w, v = fit(pa[:n], xa[:n])
                acc[name][i].append(pair_accuracy(pe @ w + xe @ v))
    return {name: [100 * float(np.mean(a)) for a in per_n] for name, per_n in acc.items()}


def dsp_group(fz: RuntimeFeaturizer, draws: int = 20, seed: int = 0, standardised: bool = True) -> Group:
    """The four DSP domain users as draws of users over one pool of DSP's replies: each draw's comparisons
    (its domain's reply against another of the same instruction) from the fitting half in a random order,
    scored on every such comparison of the other half. ``standardised=False``: the frozen features as the
    runtime computes them (the fits are the same up to the residual's scale floor: it scales each feature)."""
    phi, X, first = dsp_pool(fz) if standardised else dsp_features(fz)  # (I, 5, K), (I, 5, F), (I,)
    n_items = phi.shape[1]
    index = np.arange(phi.shape[0] * n_items).reshape(phi.shape[:2])  # (I, 5): item of each reply
    rng, users = np.random.default_rng(seed), []
    for u in range(len(data.DSP_DOMAINS)):
        def pairs(rows: np.ndarray) -> list[tuple[int, int]]:
            return [(int(index[i, u]), int(index[i, j])) for j in range(n_items) if j != u for i in rows]

        fit_pairs, test_pairs = pairs(np.flatnonzero(first)), pairs(np.flatnonzero(~first))
        for _ in range(draws):
            order = rng.permutation(len(fit_pairs))[:max(SHOTS)]
            users.append(data.BenchUser(np.zeros(0), [fit_pairs[i] for i in order], test_pairs))
    return phi.reshape(-1, phi.shape[-1]), X.reshape(-1, X.shape[-1]), users


def validation_groups(fz: RuntimeFeaturizer, n_users: int, seed: int, standardised: bool = True
                      ) -> dict[str, Group]:
    """The users every fit is compared on, titled ``constraining: ...`` (tastes the experts were trained on:
    persona, 1 and 2-3 attributes) or ``unseen: ...`` (the five taste families and the DSP domain users), at
    seeds apart from the card's (``seed`` added to each); ``standardised``: DSP's features (``dsp_group``)."""
    st = data.load_persona()
    g, r, X_stmt = fz.outputs_and_features([("", s) for s in st.text])  # (S, K), (S, K), (S, F)
    pool = attribute_pool(fz, with_probe=False)
    phi, X = pool["phi"], pool["X"]
    tp = taste_pool(pool["pool"])
    return {
        "constraining: persona": (expert_features(g, r), X_stmt.astype(np.float64),
                                  data.persona_benchmark(st, n_users=n_users, seed=777 + seed)),
        "constraining: 1 attribute": (phi, X, attribute_benchmark(pool["pool"], n_users=n_users, n_attributes=1,
                                                                    seed=778 + seed)),
        "constraining: 2-3 attributes": (phi, X, attribute_benchmark(pool["pool"], n_users=n_users, seed=779 + seed)),
        **{f"unseen: taste family: {f}": (phi, X, taste_benchmark(tp, f, n_users=n_users, seed=8642 + i + seed))
           for i, f in enumerate(TASTE_FAMILIES)},
        "unseen: DSP domain users (4 x 20 draws)": dsp_group(fz, seed=seed, standardised=standardised)}


def print_table(title: str, rows: dict[str, list[float]]) -> None:
    print(f"{title}\n{'':44}" + "".join(f"{'N=' + str(n):>8}" for n in SHOTS))
    for name, vals in rows.items():
        print(f"  {name:42}" + "".join(f"{v:8.1f}" for v in vals), flush=True)


def card_users(fz: RuntimeFeaturizer, residual: float | str, prior: dict[str, float] | None) -> None:
    """The card's own users (the taste families at the card's seeds, the DSP domain users at its draws), fitted
    with the residual ``residual`` under ``prior`` as the default: its rows next to the weights alone,
    leave-one-out's choice and the frozen probe, which the card's tables also show (a check that these are the
    card's users)."""
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    label = f"residual {residual}, {prior_label(prior)}"
    names = {"model_residual": label, "model": "weights alone", "model_auto": "auto (loo)",
             "frozen_probe": "frozen probe"}
    tastes = taste_users(attribute_pool(fz, with_probe=False), w0, lam, P, residual_strength=residual,
                         residual_prior=prior)
    for fam in TASTE_FAMILIES:
        print_table(f"the card's taste users: {fam}",
                    {label: [100 * tastes[fam][key][str(n)] for n in SHOTS] for key, label in names.items()})
    dsp = dsp_users(fz, w0, lam, P, residual_strength=residual, residual_prior=prior)
    print_table("the card's DSP domain users", {name: [100 * dsp[key][str(n)] for n in SHOTS] for key, name in
                                                (("model_plus_residual", label),
                                                 ("model", "weights alone"), ("model_auto", "auto (loo)"),
                                                 ("frozen_probe", "frozen probe"))})


Items = tuple[np.ndarray, np.ndarray]  # phi (R, K), X (R, F) of single replies


def reference_answers(fz: RuntimeFeaturizer, n: int = 300, seed: int = 5) -> Items:
    """``n`` real answers of HH-RLHF helpful's training split (licensed), as items: where ``--quality`` centres
    a taste and measures the population score's spread."""
    train = data.load_hh_helpful(split="train")
    pick = np.random.default_rng(seed).permutation(len(train))[:2 * n]
    answers = real_answers([train[i] for i in pick])[:n]
    g, rw, X = fz.outputs_and_features([(p, a) for p, a, _ in answers])
    return expert_features(g, rw), X.astype(np.float64)


def bounded_scorer(w: np.ndarray, v: np.ndarray, w0: np.ndarray, ref: Items, spread: float, bound: float | None
                   ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Scores (R,) of items phi (R, K), X (R, F) under a profile's weights w (K,) and residual v (F,): the
    population's score ``phi . w0`` plus the taste ``t = phi . (w - w0) + X . v`` centred on the reference
    answers ``ref``, bounded to ``bound`` times ``spread`` (the population score's spread over them) by a tanh
    (None: as the runtime scores, unbounded)."""
    d = w - w0  # (K,)
    centre = float((ref[0] @ d + ref[1] @ v).mean())
    cap = None if bound is None else bound * spread

    def score(phi: np.ndarray, X: np.ndarray) -> np.ndarray:
        t = phi @ d + X @ v - centre  # (R,)
        return phi @ w0 + (t if cap is None else cap * np.tanh(t / cap))  # (R,)
    return score


def anchored(fit: Fit, anchors: Items) -> Fit:
    """``fit`` with the anchor comparisons' differences (phi (M, K), X (M, F)) after a user's own."""
    return lambda phi, X: fit(np.concatenate([phi, anchors[0]]), np.concatenate([X, anchors[1]]))


QUALITY_PRIORS = (1.0, 10.0, 100.0)  # --quality: strengths of the anchors' prior on the weights (quality_prior)


def quality_prior(w0: np.ndarray, lam: float, P: np.ndarray | None, anchors: Items, strength: float | None
                  ) -> Fit:
    """The expert weights alone under a prior that a taste leaves the anchor comparisons' margins where the
    population has them: precision ``lam P + mu G``, ``G = Phi_a^T Phi_a / M`` (K, K) of the anchors'
    differences, at ``mu = strength`` or (None) the one of QUALITY_PRIORS and 0 with the highest evidence."""
    G = anchors[0].T @ anchors[0] / len(anchors[0])  # (K, K)
    base = lam * (np.eye(len(w0)) if P is None else P)  # (K, K)

    def fit(phi: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu = strength if strength is not None else max(
            (0.0, *QUALITY_PRIORS), key=lambda m: log_evidence(phi, None, w0, 1.0, base + m * G, None))
        return fit_map(phi, w0, 1.0, base + mu * G)[0], np.zeros(X.shape[1])
    return fit


def anchor_differences(fz: RuntimeFeaturizer, n: int = 100, seed: int = 5) -> Items:
    """``n`` comparisons of a real answer (HH-RLHF helpful's training split) against a worse reply from
    ``ANCHOR_FAMILIES`` (training phrasings), as differences phi (n, K), X (n, F)."""
    train = data.load_hh_helpful(split="train")
    rng = np.random.default_rng(seed)
    recs = benign_degradation_records([train[i] for i in rng.permutation(len(train))[:4 * n]],
                                      families=ANCHOR_FAMILIES, families_per_answer=1, seed=seed)
    recs = [recs[i] for i in rng.permutation(len(recs))[:n]]
    return pair_outputs(fz, recs)


def quality(fz: RuntimeFeaturizer, folder: str, n_users: int, seed: int, names: list[str]) -> None:
    """Each fit of ``names`` (and the first with anchors; the weights alone under the anchors' prior,
    ``quality_prior``), its users' profiles at N = 5 / 10 / 20 / 50 scored
    on their held-out comparisons, and at QUALITY_SHOTS on the sanity suite (the worst of its kinds, per
    user) and the everyday requests (the share of pairs won): do personalized scores keep the population's
    sense of answer quality? Each under BOUNDS and GUARDS."""
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    table = fits(w0, lam, P, fz.feature_blocks)
    anchors = anchor_differences(fz)
    table = {name: table[name] for name in names}
    table[f"{names[0]}, {len(anchors[0])} anchors"] = anchored(table[names[0]], anchors)
    for mu in (*QUALITY_PRIORS, None):
        label = "by evidence" if mu is None else f"{mu:g}"
        table[f"weights only, anchors' prior {label}"] = quality_prior(w0, lam, P, anchors, mu)
    ref = reference_answers(fz)
    sanity_recs = sanity_records()
    kinds = np.array([r["kind"] for r in sanity_recs])
    suites = {"sanity": pair_items(fz, sanity_recs), "everyday": pair_items(fz, everyday_records())}
    suite_pop = {name: phi[c] @ w0 - phi[j] @ w0 for name, (phi, _, c, j) in suites.items()}  # (N,) margins

    def suite_scores(score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """The margins (N,) ``score`` gives each suite's pairs."""
        out = {}
        for name, (phi, X, c, j) in suites.items():
            s = score(phi, X)  # (P,)
            out[name] = s[c] - s[j]  # (N,)
        return out

    def suite_wins(margins: dict[str, np.ndarray], guard: float | None, clip: float | None = None
                   ) -> tuple[float, float]:
        """The worst sanity kind's share won, the everyday pairs' share won, ranked under ``guard``
        (or with the taste clipped at ``clip``)."""
        won = {name: decide(m, suite_pop[name], guard, clip) > 0 for name, m in margins.items()}  # (N,) each
        worst = min(float(won["sanity"][kinds == k].mean()) for k in dict.fromkeys(kinds.tolist()))
        return worst, float(won["everyday"].mean())

    unpersonalized = suite_wins(suite_pop, None)
    spread = float((ref[0] @ w0).std())  # the population score's spread over real answers
    medians = {name: float(np.median(m)) / spread for name, m in suite_pop.items()}
    print(f"{Path(folder).name} (int8 runtime); unpersonalized: sanity suite's worst kind "
          f"{100 * unpersonalized[0]:.1f}%, everyday pairs won {100 * unpersonalized[1]:.1f}%; the population's "
          f"median margin on them {medians['sanity']:.1f} and {medians['everyday']:.1f} times its scores' spread "
          f"over real answers ({spread:.2f})")
    head = "".join(f"{'N=' + str(n):>7}" for n in SHOTS)
    tail = "".join(f"{'N=' + str(n):>7}" for n in QUALITY_SHOTS)
    # each fit's profiles scored as the runtime does (no bound, no guard), with the taste bounded, guarded, or
    # clipped at RANGES times the taste's range on the user's own comparisons (is a bad reply's taste beyond it?)
    variants = [("", None, None, None), *((f", bounded {b:g}", b, None, None) for b in BOUNDS if b is not None),
                *((f", guarded {g:g}", None, g, None) for g in GUARDS),
                *((f", clip {k:g} range", None, None, k) for k in RANGES)]
    for title, (phi, X, users) in validation_groups(fz, n_users, seed, standardised=False).items():
        print(f"{title} ({len(users)} users): held-out accuracy (%) | sanity, worst kind | everyday pairs won\n"
              f"{'':56}{head} |{tail} |{tail}")
        pop = phi @ w0  # (R,)
        for name, fit in table.items():
            mine = variants if "anchor" not in name else variants[:1]
            acc: dict[tuple[str, int], list[float]] = {(label, n): [] for label, *_ in mine for n in SHOTS}
            won: dict[tuple[str, int], list[tuple[float, float]]] = {
                (label, n): [] for label, *_ in mine for n in QUALITY_SHOTS}
            for u in users:
                a, e = np.array(u.adapt), np.array(u.eval)
                for n in SHOTS:
                    pa, xa = phi[a[:n, 0]] - phi[a[:n, 1]], X[a[:n, 0]] - X[a[:n, 1]]  # (n, K), (n, F)
                    w, v = fit(pa, xa)  # (K,), (F,)
                    span = taste_range(pa, xa, w, v, w0)
                    scored: dict[float | None, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
                    for label, bound, guard, k in mine:
                        clip = None if k is None else k * span
                        if bound not in scored:  # scored once per bound; its guards rank the same scores
                            score = bounded_scorer(w, v, w0, ref, spread, bound)
                            s = score(phi, X)  # (R,)
                            scored[bound] = (s[e[:, 0]] - s[e[:, 1]],
                                             suite_scores(score) if n in QUALITY_SHOTS else {})
                        margins, suite_margins = scored[bound]
                        acc[(label, n)].append(pair_accuracy(decide(margins, pop[e[:, 0]] - pop[e[:, 1]], guard,
                                                                     clip)))
                        if n in QUALITY_SHOTS:
                            won[(label, n)].append(suite_wins(suite_margins, guard, clip))
            for label, *_ in mine:
                print(f"  {name + label:54}" + "".join(f"{100 * np.mean(acc[(label, n)]):7.1f}" for n in SHOTS)
                      + " |" + "".join(f"{100 * np.mean([x[0] for x in won[(label, n)]]):7.1f}"
                                       for n in QUALITY_SHOTS)
                      + " |" + "".join(f"{100 * np.mean([x[1] for x in won[(label, n)]]):7.1f}"
                                       for n in QUALITY_SHOTS), flush=True)


def decide(user: np.ndarray, population: np.ndarray, guard: float | None, clip: float | None = None
           ) -> np.ndarray:
    """Margins (N,) of pairs as ranked: the user's, under a population guard (``guarded_margins``), or with
    the taste's part of each margin (the user's minus the population's) clipped to ``[-clip, clip]``."""
    if clip is not None:
        return population + np.clip(user - population, -clip, clip)
    return user if guard is None else guarded_margins(user, population, guard)


def taste_range(phi: np.ndarray, X: np.ndarray, w: np.ndarray, v: np.ndarray, w0: np.ndarray) -> float:
    """The largest taste margin ``|phi . (w - w0) + X . v|`` of a user's own N comparisons (phi (N, K), X (N, F)):
    how far the fitted taste separates the replies it was fitted on."""
    return float(np.abs(phi @ (w - w0) + X @ v).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    ap.add_argument("--users", type=int, default=100, help="users per group")
    ap.add_argument("--seed", type=int, default=0, help="added to every user seed: another draw of the users")
    ap.add_argument("--spread", action="store_true",
                    help="also the residual under a prior shaped by the licensed training pool's spread")
    ap.add_argument("--card-users", default=None, metavar="RESIDUAL",
                    help="instead: the card's own taste and DSP users with this residual as the default "
                         "(a strength, auto or evidence)")
    ap.add_argument("--probes", action="store_true",
                    help="instead: the frozen probe on the same users, under no prior and each prior per block")
    ap.add_argument("--card-prior", type=parse_prior, default=None, metavar="BLOCK=SCALE,...",
                    help="with --card-users: the residual's prior per block (default: none, every block 1)")
    ap.add_argument("--quality", action="store_true",
                    help="instead: the sanity suite and the everyday requests scored under the users' profiles "
                         "(the evidence under the build's prior, with and without anchors; weights only, also "
                         "under the anchors' prior; residual 30; the same from N = 20), unbounded, with a "
                         "bounded taste, ranked with a population guard, and with the taste clipped at the "
                         "user's own range")
    args = ap.parse_args()
    fz = RuntimeFeaturizer(args.model)
    if args.quality:
        quality(fz, args.model, args.users, args.seed, [f"evidence, {prior_label(BUILD_RESIDUAL_PRIOR)}",
                                                        "weights only", "residual 30",
                                                        f"the same from N = 20, {prior_label(BUILD_RESIDUAL_PRIOR)}"])
        return
    if args.card_users is not None:
        card_users(fz, residual_setting(args.card_users), args.card_prior)
        return
    if args.probes:
        groups = validation_groups(fz, args.users, args.seed)
        print(f"{Path(args.model).name} (int8 runtime); the frozen probe under each prior; held-out accuracy (%)")
        for title, (_, X, users) in groups.items():
            print_table(f"{title} ({len(users)} users)", {
                f"frozen probe, {prior_label(p)}": [100 * a for a in probe_few_shot(
                    X, users, prior=prior_scales(residual_blocks(p, fz.feature_blocks), X.shape[1])).values()]
                for p in (None, *PRIORS)})
        return
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    spread = train_pool_spread(fz) if args.spread else None
    table = fits(w0, lam, P, fz.feature_blocks, spread)
    # DSP's features come standardised over its replies (dsp_pool): the transform applies to them as they are
    dsp_spread = None if spread is None else (np.ones_like(spread[0]), spread[1])
    dsp_table = fits(w0, lam, P, fz.feature_blocks, dsp_spread)
    groups = validation_groups(fz, args.users, args.seed)
    constraining = {t.split(": ", 1)[1]: g for t, g in groups.items() if t.startswith("constraining")}
    unseen = {t.split(": ", 1)[1]: g for t, g in groups.items() if t.startswith("unseen")}
    print(f"{Path(args.model).name} (int8 runtime), prior strength {lam:g}; held-out accuracy (%)")
    results: dict[str, dict[str, list[float]]] = {}
    for kind, groups in (("constraining", constraining), ("unseen", unseen)):
        for title, group in groups.items():
            results[title] = scan(group, dsp_table if title.startswith("DSP") else table)
            print_table(f"{kind}: {title} ({len(group[2])} users)", results[title])

    def gain(name: str, titles: list[str]) -> np.ndarray:  # (groups x N,) points over the weights alone
        return np.concatenate([np.subtract(results[t][name], results[t]["weights only"]) for t in titles])

    print("\nagainst the weights alone: the worst change over the constraining groups and N, the mean change "
          "over the unseen tastes and N")
    for name in table:
        print(f"  {name:42}{gain(name, list(constraining)).min():+8.2f}{gain(name, list(unseen)).mean():+8.2f}")
    allowed = [name for name in table if gain(name, list(constraining)).min() >= -TOLERANCE]
    print(f"within {TOLERANCE} point of the weights alone on every constraining group and N: {', '.join(allowed)}")
    print("family-out: the pick on the other unseen groups, and its gain on the one left out (N = 5 / 10 / 20 / 50)")
    for held in unseen:
        others = [t for t in unseen if t != held]
        pick = max(allowed, key=lambda name: gain(name, others).mean())
        print(f"  {held:34}{pick:>38}" + "".join(f"{g:+7.1f}" for g in gain(pick, [held])))


if __name__ == "__main__":
    main()
