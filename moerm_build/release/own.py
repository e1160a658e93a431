"""Your own preferences in one command: a TRL-style JSONL -> a model folder that keeps the base's sense of quality.

    python -m moerm_build own prefs.jsonl -o moerm-models/mine               # on top of the shipped model
    python -m moerm_build own prefs.jsonl -o moerm-models/mine --scratch     # a new head from the file alone

**On a base model** (default: the shipped one). The base's backbone, router, experts and population weights
stay as they are; one new shared expert, ``your preferences``, joins with population weight 1: a linear
read-out of the base's pair features fitted on your comparisons *on top of* the base's population score
(the fit of the shipped helpfulness read-out, ``moerm_build/train/readout.py``), its L2 chosen by 5-fold
cross-validation over your prompts. Where your file says nothing, the score is the base's; where it does,
the read-out adds what it learned. No torch and no data set are needed, only the base folder.

**From scratch** (``--scratch``, the earlier behaviour): a new head trained on the file alone, any local
encoder (``--backbone``). It knows only your file: on other questions it may prefer a bad reply.

Comparisons are split by prompt: ``test_fraction`` is held out. The report gives the held-out accuracy of
the base and of the new folder, and how both do on the everyday requests (``moerm_build/data/evalsets``) and, where
``../shared/data`` is present, on the sanity suite; ``warnings`` says when the file is too small to trust.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from moerm_build import data

log = logging.getLogger("moerm_build")
OWN_NAME = "your preferences"  # the new expert's name
L2_GRID = (0.1, 1.0, 10.0, 100.0)  # the read-out's L2 (features' own units), chosen by cross-validation
FOLDS = 5
MIN_TRAIN = 200  # fewer training comparisons: the report warns
MIN_TEST = 50  # fewer held-out comparisons: the accuracy is too noisy to compare, the report warns
QUALITY_CHECKS = (  # (report key, what it measures, largest drop from the base before the report warns)
    ("everyday_wins", "everyday requests, pairs the real answer wins", 0.02),
    ("everyday_answer_first", "everyday requests whose answer ranks first", 0.05),
    ("sanity_min", "sanity suite, the worst kind of bad reply", 0.02))


def split_records(recs: list[data.Record], test_fraction: float, source: Path) -> tuple[list, list]:
    """Train and test comparisons, split by prompt (a prompt's comparisons stay on one side)."""
    test = [r for r in recs if data.in_split(r["prompt"] + "|own", "test", test_fraction)]
    train = [r for r in recs if not data.in_split(r["prompt"] + "|own", "test", test_fraction)]
    if not train or not test:
        raise ValueError(f"{source}: need comparisons on several distinct prompts to hold some out "
                         f"({len(recs)} comparisons, {len({r['prompt'] for r in recs})} prompts)")
    return train, test


# ------------------------------------------------------------------------ on a base model
def standardisation(w: Any) -> tuple[np.ndarray, np.ndarray]:
    """A head's feature mean and std (F,) each, float64 (0 and 1 where the graph stores none)."""
    F = w.w1.shape[1]
    mean = np.zeros(F) if w.feat_mean is None else np.asarray(w.feat_mean, np.float64)
    std = np.ones(F) if w.feat_std is None else np.asarray(w.feat_std, np.float64)
    return mean, std


def base_terms(model: Any, recs: list[data.Record], mean: np.ndarray, std: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised pair features of chosen and rejected (N, F) each, and the base's population margin (N,)."""
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    X, _ = model.pair_features(pairs)  # (2N, F)
    H = (X.astype(np.float64) - mean) / std  # (2N, F)
    s = model.score_pairs(pairs)  # (2N,)
    n = len(recs)
    return H[:n], H[n:], s[:n] - s[n:]


def choose_l2(Hc: np.ndarray, Hr: np.ndarray, offset: np.ndarray, groups: np.ndarray, bound: float,
              std: np.ndarray, grid: tuple[float, ...] = L2_GRID, folds: int = FOLDS
              ) -> tuple[float, dict[str, float]]:
    """The L2 of ``grid`` with the best mean held-out log-likelihood over ``folds`` folds of prompts
    (``groups`` (N,), a fold number per comparison); ties to the stronger penalty. Returns it and every
    entry's score (the base alone as ``"base"``)."""
    from scipy.special import log_expit

    from moerm_build.train.readout import fit_linear_readout, readout_margin

    scores = {"base": float(log_expit(offset).mean())}
    best = (-np.inf, grid[-1])
    for l2 in sorted(grid, reverse=True):
        ll = np.zeros(len(offset))
        for f in range(folds):
            te = groups == f
            if not te.any() or te.all():
                continue
            u = fit_linear_readout(Hc[~te], Hr[~te], offset[~te], l2, bound, std)
            ll[te] = log_expit(readout_margin(Hc[te], Hr[te], offset[te], u, bound))
        scores[f"{l2:g}"] = float(ll.mean())
        if scores[f"{l2:g}"] > best[0] + 1e-9:
            best = (scores[f"{l2:g}"], l2)
    return best[1], scores


def with_readout(folder: Path, out: Path, u: np.ndarray, model_id: str, fitted: dict[str, Any]) -> Path:
    """Write ``out``: ``folder`` with the read-out ``u`` (F,) appended to every precision's head graph as its
    last shared expert, population weight 1; backbone, tokenizer and reference corpus as they were."""
    import onnx

    from moerm_lite.folder import ModelConfig, read_json

    from moerm_build.graphs.onnx_head import HeadWeights, build_head_graph, read_head_weights, stored_expert_dtype
    from moerm_build.release.package import write_model_folder
    from moerm_build.train.readout import readout_expert

    cfg = ModelConfig.from_dict(read_json(folder / "config.json", "config"))
    graphs: dict[str, onnx.ModelProto] = {}
    for g in cfg.graphs.values():
        stored = onnx.load(folder / g.head)
        w = read_head_weights(stored)
        w1, b1, w2 = readout_expert(u, *standardisation(w), w.w1.shape[2])
        new = HeadWeights(router_w=w.router_w, router_b=w.router_b, w1=np.concatenate([w.w1, w1[None]]),
                          b1=np.concatenate([w.b1, b1[None]]), w2=np.concatenate([w.w2, w2[None]]),
                          b2=np.concatenate([w.b2, [0.0]]), reward_bound=w.reward_bound,
                          feat_mean=w.feat_mean, feat_std=w.feat_std)
        gating = str(cfg.extra.get("gating", "topk_softmax"))
        graphs[g.head] = build_head_graph(new, cfg.top_k, gating=gating, expert_dtype=stored_expert_dtype(stored))
        graphs[g.backbone] = onnx.load(folder / g.backbone)
    d = cfg.to_dict()
    P = None
    if cfg.prior_precision is not None:  # the new expert's prior precision: the median of the others'
        P0 = np.asarray(cfg.prior_precision, np.float64)  # (K, K)
        P = np.block([[P0, np.zeros((len(P0), 1))], [np.zeros((1, len(P0))), np.median(np.diag(P0))]])
    d.update(model_id=model_id, n_experts=cfg.n_experts + 1, n_shared=cfg.n_shared + 1,
             expert_names=[*cfg.expert_names, OWN_NAME], w0=[*cfg.w0, 1.0],
             prior_precision=None if P is None else P.tolist())
    d["training"] = {**d.get("training", {}), "own": fitted}
    d.pop("expert_cards", None)  # recomputed below for the new expert list
    extra = {rel: (folder / rel).read_text(encoding="utf-8") for rel in ([d["reference"]] if d.get("reference") else [])}
    card = (f"# {model_id}\n\nThe model `{cfg.model_id}` with one more shared expert, \"{OWN_NAME}\", fitted on "
            f"{fitted['train_comparisons']} comparisons of `{fitted['source']}` by `python -m moerm_build own` "
            f"(L2 {fitted['l2']:g}, chosen by {FOLDS}-fold cross-validation over prompts).\n\n"
            "```json\n" + json.dumps(fitted.get("report", {}), indent=1) + "\n```\n")
    write_model_folder(out, d, graphs, (folder / "tokenizer.json").read_text(encoding="utf-8"), card, extra)
    if d.get("reference"):
        from moerm_build.release.package import add_expert_cards

        add_expert_cards(out)
    return out


def quality(folder: Path) -> dict[str, Any]:
    """The folder on the everyday requests and, with ``../shared/data``, the sanity suite."""
    from moerm_build.evaluate.metrics import RuntimeFeaturizer
    from moerm_build.evaluate.robustness import everyday

    fz = RuntimeFeaturizer(folder)
    ev = everyday(fz, fz.w0)
    res: dict[str, Any] = {"everyday_wins": ev["wins"], "everyday_answer_first": ev["answer_first"]}
    try:
        from moerm_build.evaluate.real_eval import sanity

        res["sanity_min"] = sanity(fz, fz.w0)["min"]
    except (FileNotFoundError, OSError) as e:  # no ../shared/data: the sanity suite needs DSP's replies
        log.info("sanity suite skipped: %s", e)
    return res


def own_on_base(jsonl: Path, out: Path, *, base: "str | Path | None" = None, test_fraction: float = 0.1,
                with_quality: bool = True) -> dict[str, Any]:
    """Fit the ``your preferences`` read-out on ``jsonl`` on top of ``base`` and write ``out``; return the
    report (accuracies, quality checks, warnings)."""
    import onnx

    from moerm_lite import RewardModel

    from moerm_build.evaluate.metrics import pair_accuracy
    from moerm_build.graphs.onnx_head import read_head_weights
    from moerm_build.train.readout import fit_linear_readout, readout_margin

    recs = data.load_jsonl(jsonl)
    train, test = split_records(recs, test_fraction, jsonl)
    m = RewardModel.load(base)
    folder = m.folder
    w = read_head_weights(onnx.load(folder / m.config.graphs[m.precision].head))
    (mean, std), bound = standardisation(w), w.reward_bound
    Hc, Hr, off = base_terms(m, train, mean, std)
    groups = np.array([int(data.bucket(r["prompt"] + "|fold", "fold") * FOLDS) for r in train])
    l2, cv = choose_l2(Hc, Hr, off, groups, bound, std)
    u = fit_linear_readout(Hc, Hr, off, l2, bound, std)  # (F,)
    Tc, Tr, toff = base_terms(m, test, mean, std)
    report: dict[str, Any] = {
        "train_comparisons": len(train), "test_comparisons": len(test), "l2": l2, "cv_log_likelihood": cv,
        "heldout_accuracy_base": pair_accuracy(toff), "heldout_accuracy": pair_accuracy(readout_margin(Tc, Tr, toff, u, bound))}
    fitted = {"source": Path(jsonl).name, "train_comparisons": len(train), "l2": l2, "base": m.config.model_id,
              "base_hash": m.model_hash, "report": report}
    with_readout(folder, Path(out), u, Path(out).name, fitted)
    report["folder"] = str(out)
    warnings = []
    if len(train) < MIN_TRAIN:
        warnings.append(f"only {len(train)} training comparisons (< {MIN_TRAIN}): the read-out learns little "
                        "and may learn noise; collect more before trusting it")
    if len(test) < MIN_TEST:
        warnings.append(f"only {len(test)} held-out comparisons (< {MIN_TEST}): the held-out accuracies are "
                        "too noisy to compare")
    if cv[f"{l2:g}"] <= cv["base"]:
        warnings.append("cross-validation finds no gain over the base model: your file's preferences are not "
                        "something the base's features predict, or there are too few of them")
    if with_quality:
        report["quality_base"], report["quality"] = quality(folder), quality(Path(out))
        for key, what, limit in QUALITY_CHECKS:
            if key not in report["quality"]:
                continue
            drop = report["quality_base"][key] - report["quality"][key]
            if drop > limit:
                warnings.append(f"{what}: {100 * report['quality'][key]:.1f}% against the base's "
                                f"{100 * report['quality_base'][key]:.1f}%: your file pulls against answer quality "
                                "there; a profile fitted on the base (moerm-lite fit) keeps more of it")
    report["warnings"] = warnings
    for msg in warnings:
        log.warning("%s", msg)
    return report


# ------------------------------------------------------------------------ from scratch
def add_shipped_reference(folder: Path) -> None:
    """Give a folder the shipped model's reference corpus and its own expert cards (``moerm-lite experts``)."""
    from moerm_lite.model import default_model_path

    from moerm_build.release.package import add_expert_cards, add_reference

    ref = default_model_path() / "reference.jsonl"
    if ref.is_file():
        add_reference(folder, ref.read_text(encoding="utf-8"))
        add_expert_cards(folder)


def train_own(jsonl: Path, out: Path, *, backbone: str = "", test_fraction: float = 0.1,
              **overrides: Any) -> dict[str, Any]:
    """Train a new head on ``jsonl`` alone (minus a held-out split), export an int8 folder to ``out``; return
    the accuracies."""
    from moerm_build.evaluate.metrics import RuntimeFeaturizer, pair_accuracy, records_phi
    from moerm_build.release.onnx_export import export_model
    from moerm_build.train.train import TrainConfig, train

    recs = data.load_jsonl(jsonl)
    train_recs, test = split_records(recs, test_fraction, jsonl)
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    # a small default for small files: fewer experts, more passes
    defaults = {"n_experts": 8, "n_shared": 2, "epochs": max(8, min(200, 20_000 // max(len(train_recs), 1))),
                "batch_size": min(512, max(16, len(train_recs) // 4))}
    cfg = TrainConfig(**{**defaults, **overrides, "backbone": backbone, "sources": [], "jsonl": [str(jsonl)]})
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, tmp, records=train_recs)
        folder = export_model(tmp, out, model_id=Path(out).name)
    add_shipped_reference(Path(folder))
    fz = RuntimeFeaturizer(folder)
    phi = records_phi(fz, test)  # (N, K)
    res: dict[str, Any] = {"folder": str(folder), "train_comparisons": len(train_recs),
                           "test_comparisons": len(test), "heldout_accuracy": pair_accuracy(phi @ fz.w0)}
    users = sorted({r["user_id"] for r in test if r.get("user_id")})
    if users:
        trained = {r.get("user_id") for r in train_recs}
        res["heldout_accuracy_by_user_population_weights"] = {
            u: pair_accuracy(phi[np.array([r.get("user_id") == u for r in test])] @ fz.w0)
            for u in users if u in trained}
    log.info("held-out accuracy %.3f on %d comparisons", res["heldout_accuracy"], len(test))
    return res
