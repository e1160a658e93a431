"""Parity of an exported model folder against the torch model it came from.

On held-out comparisons from every source: pairwise decision agreement, Spearman correlation
of scores, identical top-k expert selection, max score difference, and batch-size invariance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from moerm_lite import RewardModel
from moerm_lite.head import combine

from moerm_build import data
from moerm_build.evaluate.metrics import RuntimeFeaturizer, TorchFeaturizer


def heldout_comparisons(per_source: int = 300, seed: int = 0) -> list[data.Record]:
    """Up to ``per_source`` held-out comparisons from each source (never-trained-on splits)."""
    rng = np.random.default_rng(seed)
    st = data.load_persona()
    users = data.persona_benchmark(st, n_users=10, seed=99)
    persona = [{"prompt": "", "chosen": st.text[c], "rejected": st.text[r], "source": "persona"}
               for u in users for c, r in u.eval]
    out: list[data.Record] = []
    for recs in (persona, data.load_hh_harmless(split="test"), data.load_hh_helpful(split="test"),
                 data.load_finegrained_qa(split="test"), data.load_topical_chat(split="test"),
                 data.load_relabeled_hh()):
        take = rng.permutation(len(recs))[:per_source]
        out += [recs[i] for i in take]
    return out


def heldout_inputs() -> list[tuple[str, str]]:
    """Every distinct held-out (prompt, response) of every source: test splits, relabeled HH, test statements."""
    recs = (data.load_relabeled_hh() + data.load_hh_harmless(split="test") + data.load_hh_helpful(split="test")
            + data.load_finegrained_qa(split="test") + data.load_topical_chat(split="test"))
    st = data.load_persona()
    return sorted(set(data.iter_pairs(recs)) | {("", st.text[i]) for i in data.statement_split(st, "test")})


def kept_experts(folder: "str | Path") -> list[int] | None:
    """Which of the trained experts a folder ships (export prunes the ones no input routes to)."""
    return RewardModel.load(folder, threads=1).config.extra.get("training", {}).get("kept_experts")


def torch_outputs(run: "str | Path", folder: "str | Path",
                  pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Torch gates, rewards (N, K) and w0 (K,) restricted to the experts the folder ships."""
    tz = TorchFeaturizer(run)
    g, r = tz.outputs(pairs)
    keep = kept_experts(folder) or list(range(g.shape[1]))
    return g[:, keep], r[:, keep], tz.w0[keep]


def selection_agreement(run: "str | Path", folder: "str | Path", precision: str = "int8") -> dict[str, Any]:
    """Identical top-k expert sets, torch fp32 vs the folder, on all held-out inputs (~12k for the shipped data)."""
    pairs = heldout_inputs()
    g_t, _, _ = torch_outputs(run, folder, pairs)
    g_o, _ = RuntimeFeaturizer(folder, precision=precision).outputs(pairs)
    same = ((g_t > 0) == (g_o > 0)).all(1)  # (N,)
    p = float(same.mean())
    return {"inputs": len(pairs), "same_topk_selection": p, "stderr": float(np.sqrt(p * (1 - p) / len(pairs)))}


def embedding_error(run: "str | Path", folder: "str | Path", precision: str = "int8", n: int = 1000) -> float:
    """RMS of (folder's backbone - torch fp32) embeddings over RMS of torch's, on n held-out responses."""
    texts = sorted({r for _, r in heldout_inputs()})
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:n]]
    got, _ = RewardModel.load(folder, precision=precision, threads=2).embed(texts)  # (n, H)
    ref = TorchFeaturizer(run).embed(texts)  # (n, H)
    return float(np.sqrt(((got - ref) ** 2).sum(1).mean() / (ref ** 2).sum(1).mean()))


def parity_report(run: "str | Path", folder: "str | Path", precision: str = "int8",
                  per_source: int = 300) -> dict[str, Any]:
    """Compare torch fp32 (the run) with the folder's graphs on held-out comparisons."""
    recs = heldout_comparisons(per_source)
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    g_t, r_t, w0 = torch_outputs(run, folder, pairs)
    g_o, r_o = RuntimeFeaturizer(folder, precision=precision).outputs(pairs)
    s_t, s_o = combine(g_t, r_t, w0), combine(g_o, r_o, w0)  # (2N,)
    n = len(recs)
    same_sel = ((g_t > 0) == (g_o > 0)).all(1)  # (2N,)
    by_source: dict[str, float] = {}
    for src in sorted({r["source"] for r in recs}):
        m = np.array([r["source"] == src for r in recs])
        by_source[src] = float(np.mean(np.sign(s_t[:n] - s_t[n:])[m] == np.sign(s_o[:n] - s_o[n:])[m]))
    model = RewardModel.load(folder, precision=precision, threads=2)
    sub = pairs[:256]
    b1, b32 = model.score_pairs(sub, batch_size=1), model.score_pairs(sub, batch_size=32)
    return {
        "precision": precision,
        "comparisons": n,
        "decision_agreement": float(np.mean(np.sign(s_t[:n] - s_t[n:]) == np.sign(s_o[:n] - s_o[n:]))),
        "decision_agreement_by_source": by_source,
        "spearman": float(spearmanr(s_t, s_o).statistic),
        "same_topk_selection": float(same_sel.mean()),
        "max_abs_score_diff": float(np.abs(s_t - s_o).max()),
        "batch1_vs_batch32_max_diff": float(np.abs(b1 - b32).max()),
    }
