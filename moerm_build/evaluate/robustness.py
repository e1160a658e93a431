"""Does the score know answer quality, or only our list of bad replies? Family-out and everyday checks.

- **Degradation families, held out** (``family_table``): real answers to held-out prompts (DSP's original
  Alpaca replies and HH-RLHF helpful's test split, never trained on) against a worse reply of each family
  of ``moerm_build.data.degrade`` (test phrasings). Columns: the model's population score; the prompt-reply cosine
  alone; a logistic probe on the frozen pair features fitted on the licensed training mixture plus every
  family *but this one* (train splits, train phrasings: the family-out reference); and the same probe fitted
  with every family (an in-family ceiling for a linear read-out of these features).
- **Everyday requests** (``everyday``): ``moerm_build/data/evalsets/everyday.jsonl``, written for this project and
  never trained on: short useful answers to everyday requests against terse, generic, dismissive and
  refusal replies (test phrasings). Share of pairs won, and share of requests whose answer ranks first.

- **Reward hacking** (``hacking``): ``moerm_build.evaluate.hacking``'s greedy edit search from real answers to held-out
  prompts; the share of prompts where it ends on a marked-worse text that scores higher.

``report(folder)`` runs all three on a model folder (``python -m moerm_build robustness -i FOLDER``); the model
card quotes it. Everything here is evaluation: nothing in it feeds training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moerm_lite.features import SURFACE
from moerm_lite.head import expert_features

from moerm_build import data
from moerm_build.data.contrast import HELD_OUT
from moerm_build.data.degrade import FAMILIES, benign_degradation_records, degradation_records, phrases
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy

EVERYDAY = Path(__file__).resolve().parents[1] / "data" / "evalsets" / "everyday.jsonl"
EVERYDAY_KINDS = ("terse", "generic", "dismissive", "refusal")
PROBE_L2 = 10.0  # the card's frozen probe's
TRAIN_SOURCES = ("hh_helpful", "finegrained_qa", "topical_chat")  # benign, licensed: answers to degrade


def load_everyday(path: Path = EVERYDAY) -> list[dict[str, str]]:
    """The everyday requests ``{"prompt", "answer"}`` (evaluation only)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if not (isinstance(r.get("prompt"), str) and isinstance(r.get("answer"), str)):
            raise ValueError(f"{path}: line {i + 1} needs string 'prompt' and 'answer'")
    return rows


def everyday_bad_replies() -> dict[str, list[str]]:
    """The worse replies every everyday request is scored against, by kind (test phrasings only)."""
    return {"terse": phrases("terse", "test"), "generic": phrases("generic", "test"),
            "dismissive": list(HELD_OUT["dismissive"]), "refusal": phrases("refusal", "test")}


def everyday_records(rows: Sequence[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Each request's answer against each worse reply: ``{"prompt", "chosen", "rejected", "kind"}``."""
    rows = load_everyday() if rows is None else rows
    bad = everyday_bad_replies()
    return [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": b, "kind": k}
            for r in rows for k in EVERYDAY_KINDS for b in bad[k]]


def heldout_answer_records() -> list[dict[str, Any]]:
    """Held-out real answers as records: DSP's original replies (evaluation only) and the real answers of
    HH-RLHF helpful's test split."""
    dsp = [{"prompt": r["query"], "chosen": r["responses"]["normal"], "source": "dsp"} for r in data.load_dsp()]
    return dsp + data.load_hh_helpful(split="test")


def pair_items(fz: Any, recs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct (prompt, response) of ``recs`` embedded once: model features phi (P, K), frozen features
    X (P, F), and the rows of each record's chosen (N,) and rejected (N,) reply."""
    pairs = sorted({(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")})
    pos = {p: i for i, p in enumerate(pairs)}
    g, rw, X = fz.outputs_and_features(pairs)
    c = np.array([pos[(r["prompt"], r["chosen"])] for r in recs])
    j = np.array([pos[(r["prompt"], r["rejected"])] for r in recs])
    return expert_features(g, rw), X.astype(np.float64), c, j  # (P, K), (P, F), (N,), (N,)


def pair_outputs(fz: Any, recs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Model features phi (N, K) and frozen pair features dX (N, F) of chosen minus rejected, each distinct
    (prompt, response) embedded once."""
    f, X, c, j = pair_items(fz, recs)
    return f[c] - f[j], X[c] - X[j]


def family_out_records(seed: int = 0) -> tuple[list[data.Record], list[data.Record], list[data.Record]]:
    """The records of the family-out check: the licensed training mixture's real comparisons that have a
    prompt, its degradations (train phrasings; ``seed``), and the held-out answers' degradations (test
    phrasings; ``seed + 1``)."""
    train_real = [r for name in TRAIN_SOURCES for r in data.REAL_LOADERS[name](split="train")]
    train_deg = benign_degradation_records(train_real, split="train", seed=seed)
    test_deg = benign_degradation_records(heldout_answer_records(), split="test", seed=seed + 1)
    return [r for r in train_real if r["prompt"].strip()], train_deg, test_deg


def families(recs: list[data.Record]) -> np.ndarray:
    """The degradation family of each record of ``benign_degradation_records`` (``degrade:echo`` -> echo)."""
    return np.array([r["source"].split(":", 1)[1] for r in recs])


def family_table(fz: Any, w0: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Per family, on held-out answers: the model (population weights ``w0``), the cosine, the family-out
    probe and the all-families probe (see the module's docstring). Rows ``{family: {"n", "model",
    "cosine", "probe_family_out", "probe_all"}}``, plus ``"min"`` of the model column."""
    real, train_deg, test_deg = family_out_records(seed)
    _, dX_real = pair_outputs(fz, real)
    _, dX_tr = pair_outputs(fz, train_deg)
    phi_te, dX_te = pair_outputs(fz, test_deg)
    fam_tr, fam_te = families(train_deg), families(test_deg)
    scale = np.sqrt((np.vstack([dX_real, dX_tr]) ** 2).mean(0)) + 1e-6  # (F,): standardised probe inputs
    cos = dX_te[:, -len(SURFACE)]  # (N,) the cosine's difference (SURFACE[0])

    def probe(keep: np.ndarray) -> np.ndarray:
        Z = np.vstack([dX_real, dX_tr[keep]]) / scale
        return logistic_fit(Z, np.ones(len(Z)), PROBE_L2) / scale  # (F,)

    v_all = probe(np.ones(len(fam_tr), bool))
    rows: dict[str, Any] = {}
    for fam in FAMILIES:
        te = fam_te == fam
        if not te.any():
            continue
        v_out = probe(fam_tr != fam)
        rows[fam] = {"n": int(te.sum()), "model": pair_accuracy(phi_te[te] @ w0), "cosine": pair_accuracy(cos[te]),
                     "probe_family_out": pair_accuracy(dX_te[te] @ v_out), "probe_all": pair_accuracy(dX_te[te] @ v_all)}
    return {"families": rows, "n_train_records": len(train_deg) + len(real),
            "min": min(r["model"] for r in rows.values())}


def family_out_columns(differences: Callable[[list[data.Record]], tuple[np.ndarray, np.ndarray]],
                       candidates: dict[str, list[int]], width: int = 15) -> str:
    """The family-out probe of :func:`family_table` on the pair features alone and with each candidate's
    columns of extra statistics appended, as a printable table: held-out accuracy (%) per family, and on
    the everyday set with a probe fitted on every family (``experiments/extra_features_probe.py``,
    ``experiments/sentence_features_probe.py``). ``differences(records)`` gives the records' chosen-minus-
    rejected pair features (N, F) and extra statistics (N, S)."""
    real, train_deg, test_deg = family_out_records()
    named = (("real", real), ("train", train_deg), ("test", test_deg), ("everyday", everyday_records()))
    parts = {name: differences(recs) for name, recs in named}  # name -> ((N, F), (N, S))
    fam_tr, fam_te = families(train_deg), families(test_deg)
    cols: dict[str, list[int]] = {"pair features": [], **candidates}
    table: dict[str, list[float]] = {}
    for sel in cols.values():
        R, T, E, V = (np.hstack([parts[name][0], parts[name][1][:, sel]])
                      for name in ("real", "train", "test", "everyday"))
        scale = np.sqrt((np.vstack([R, T]) ** 2).mean(0)) + 1e-6  # (F',)

        def probe(keep: np.ndarray) -> np.ndarray:  # called within this iteration only
            Z = np.vstack([R, T[keep]]) / scale
            return logistic_fit(Z, np.ones(len(Z)), PROBE_L2) / scale

        for f in FAMILIES:
            te = fam_te == f
            if te.any():
                table.setdefault(f, []).append(100 * pair_accuracy(E[te] @ probe(fam_tr != f)))
        table.setdefault("everyday", []).append(100 * pair_accuracy(V @ probe(np.ones(len(fam_tr), bool))))
    lines = ["family-out probe accuracy (%) on held-out answers; "
             "the last row: everyday pairs, probe on every family",
             f"{'family':18}" + "".join(f"{c:>{width}}" for c in cols)]
    lines += [f"{f:18}" + "".join(f"{v:{width}.1f}" for v in row) for f, row in table.items()]
    return "\n".join(lines)


def readout_family_out(run: "str | Path", seed: int = 0) -> dict[str, Any]:
    """Family-out for the model itself, where a refit can make it so: the trained experts of a run
    (``ckpt.pt``, frozen backbone) kept, its helpfulness read-out refitted on its own read-out records
    *without* each degradation family, scored on the held-out answers of ``family_table`` (torch, fp32).
    A family the experts trained on (the ``contrast`` kinds) is reported but not family-out: marked
    ``"experts_trained"``. Rows ``{family: {"n", "readout_all", "readout_family_out", "experts_trained"}}``."""
    from moerm_build.train.readout import fit_for_head, readout_margin
    from moerm_build.train.train import readout_refit

    rf = readout_refit(run)
    cfg, base, recs, Hc, Hr, off = rf.cfg, rf.base, rf.records, rf.chosen, rf.rejected, rf.offset
    fam = np.array([family_of(r["source"]) for r in recs])  # (N,) "" for real comparisons
    test = family_out_records(seed)[2]
    fam_te = families(test)
    Tc, Tr, toff = rf.inputs(test)

    def margin(keep: np.ndarray) -> np.ndarray:
        u = fit_for_head(base, Hc[keep], Hr[keep], off[keep], cfg.readout_l2)  # (F,)
        return readout_margin(Tc, Tr, toff, u, float(base.args.reward_bound))  # (M,)

    m_all = margin(np.ones(len(recs), bool))
    trained = set(trained_families({"sources": cfg.sources,  # the families the experts saw
                                    "degrade_families": cfg.degrade_families if "degrade" in cfg.sources else []}))
    rows: dict[str, Any] = {}
    for f in FAMILIES:
        te = fam_te == f
        if not te.any():
            continue
        m_out = margin(fam != f)
        rows[f] = {"n": int(te.sum()), "readout_all": pair_accuracy(m_all[te]),
                   "readout_family_out": pair_accuracy(m_out[te]), "in_readout_records": bool((fam == f).any()),
                   "experts_trained": f in trained}
    return {"families": rows, "n_records": len(recs), "l2": cfg.readout_l2}


def family_of(source: str) -> str:
    """The degradation family a read-out record stands for: ``degrade:echo`` -> echo, ``contrast:offtopic``
    -> offtopic (``CONTRAST_FAMILIES``); "" for a real comparison."""
    kind, _, sub = source.partition(":")
    if kind == "degrade":
        return sub
    if kind == "contrast":
        return CONTRAST_FAMILIES.get(sub, sub)
    return ""


def answer_first(win: np.ndarray, prompts: np.ndarray) -> float:
    """The share of requests whose answer wins every one of its pairs: ``win`` (N,) bool, one pair each of
    ``prompts`` (N,)."""
    return float(np.mean([win[prompts == p].all() for p in dict.fromkeys(prompts.tolist())]))


def everyday(fz: Any, w0: np.ndarray) -> dict[str, Any]:
    """Everyday requests: share of (answer, worse reply) pairs the answer wins, by kind, and the share of
    requests whose answer scores above every worse reply."""
    recs = everyday_records()
    phi, dX = pair_outputs(fz, recs)
    win = phi @ w0 > 0  # (N,)
    kinds = np.array([r["kind"] for r in recs])
    prompts = np.array([r["prompt"] for r in recs])
    cos = dX[:, -len(SURFACE)] > 0  # the cosine (SURFACE[0]) alone
    return {"n_requests": len(set(prompts.tolist())), "n_pairs": len(recs), "wins": float(win.mean()),
            "answer_first": answer_first(win, prompts), "cosine_wins": float(cos.mean()),
            **{k: float(win[kinds == k].mean()) for k in EVERYDAY_KINDS}}


def everyday_families(fz: Any, w0: np.ndarray) -> dict[str, float]:
    """Per degradation family, the share of pairs the real answer wins over a worse reply made from it, on the
    everyday set's short answers (held-out phrasings; ``tests/test_shipped.py``'s fixed set)."""
    rows = load_everyday()
    recs = degradation_records([r["prompt"] for r in rows], [r["answer"] for r in rows], split="test", seed=0)
    phi, _ = pair_outputs(fz, recs)  # (N, K)
    fam = families(recs)  # (N,)
    return {f: pair_accuracy(phi[fam == f] @ w0) for f in dict.fromkeys(fam.tolist())}


CONTRAST_FAMILIES = {"offtopic": "offtopic", "nonanswer": "nonanswer", "dismissive": "dismissive",
                     "truncated": "truncation"}  # moerm_build.data.contrast's kinds, as the degradation families they are


def trained_families(training: dict[str, Any]) -> list[str]:
    """The degradation families a model folder's ``config.json`` ``"training"`` record trained on: its
    ``degrade_families`` and, with the ``contrast`` source, the contrast kinds."""
    out = set(training.get("degrade_families") or [])
    if "contrast" in training.get("sources", []):
        out |= set(CONTRAST_FAMILIES.values())
    return [f for f in FAMILIES if f in out]


def hacking(model: Any, n_prompts: int = 200, steps: int = 30, seed: int = 0, user: Any = None) -> dict[str, Any]:
    """The greedy edit search (``moerm_build.evaluate.hacking``) from ``n_prompts`` held-out real answers, on the
    scores of ``user`` (``score_pairs(..., user=)``: a profile or weights; None: the population)."""
    from moerm_build.data.contrast import real_answers
    from moerm_build.evaluate.hacking import greedy_search, hacking_rate

    answers = real_answers(heldout_answer_records())
    pick = sorted(np.random.default_rng(seed).permutation(len(answers))[:n_prompts])
    res = greedy_search(model, [answers[i][0] for i in pick], [answers[i][1] for i in pick], steps=steps,
                        seed=seed, user=user)
    return {**hacking_rate(res), "steps": steps}


def report(folder: "str | Path", trained_families: Sequence[str] = (), n_prompts: int = 200,
           steps: int = 30, done: dict[str, Any] | None = None) -> dict[str, Any]:
    """Families (with which the model trained on, so the card can mark the held-out ones), everyday requests
    and the hacking search, through a model folder (int8). ``done``: parts of an earlier report of the same
    folder to keep (``"families"``, ``"everyday"``, ``"hacking"``); the rest is measured."""
    import logging

    from moerm_build.evaluate.metrics import RuntimeFeaturizer

    logging.getLogger("moerm_lite").setLevel(logging.ERROR)  # the truncation warning of each new model
    fz = RuntimeFeaturizer(folder)
    done = done or {}
    return {"families": done.get("families") or family_table(fz, fz.w0), "trained_families": list(trained_families),
            "everyday": done.get("everyday") or everyday(fz, fz.w0),
            "hacking": done.get("hacking") or hacking(fz.model, n_prompts, steps)}
