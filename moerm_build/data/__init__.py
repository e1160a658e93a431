"""The data layer. This module: comparison records from ``../shared/data`` and from user JSONL, plus the
persona-16 benchmark. Its submodules make more from them: ``attributes`` (text attributes and the users who
weigh them), ``contrast`` (worse replies of four kinds), ``degrade`` (degradation families), ``tastes``
(taste families no build trains on); ``evalsets/`` holds evaluation-only sets written for this project.

Every loader yields TRL-style records ``{"prompt", "chosen", "rejected", "source"}`` with an
optional ``"user_id"``. Held-out splits are by conversation prompt, question or statement
(a stable hash of the text), so nothing leaks between train and test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from moerm_lite.text import render_messages

# MOERM_LITE_DATA (MOERM_DATA_DIR, the old name, still works) or ../shared/data next to the checkout
DATA_DIR = Path(os.environ.get("MOERM_LITE_DATA") or os.environ.get("MOERM_DATA_DIR")
                or Path(__file__).resolve().parents[3] / "shared" / "data")

PERSONA16 = [
    "agreeableness", "conscientiousness", "extraversion", "neuroticism", "openness",
    "politically-liberal", "believes-in-gun-rights", "interest-in-art", "interest-in-math",
    "interest-in-music", "interest-in-sports", "interest-in-science", "risk-seeking",
    "subscribes-to-Christianity", "subscribes-to-utilitarianism", "machiavellianism",
]
Record = dict[str, Any]


def bucket(text: str, salt: str = "") -> float:
    """A stable number in [0, 1) from a text: the split key (same text -> same split, any order)."""
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:8], 16) / 2**32


def in_split(key: str, split: str, test_fraction: float = 0.2) -> bool:
    if split == "all":
        return True
    is_test = bucket(key, "split") < test_fraction
    return is_test if split == "test" else not is_test


# --------------------------------------------------------------------------- real data
def split_hh_transcript(text: str) -> tuple[str, str]:
    """``"\\n\\nHuman: ...\\n\\nAssistant: X"`` -> (the conversation before the last reply, X)."""
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("HH transcript without an Assistant turn")
    return text[:cut].strip(), text[cut + len("\n\nAssistant:"):].strip()


def load_hh(subset: str, data_dir: Path = DATA_DIR, split: str = "all") -> list[Record]:
    """HH-RLHF ``harmless`` or ``helpful`` base: human-labelled (chosen, rejected) replies, split by prompt."""
    if subset not in ("harmless", "helpful"):
        raise ValueError(f"HH-RLHF subset must be 'harmless' or 'helpful', got {subset!r}")
    out = []
    with gzip.open(data_dir / "hh_rlhf" / f"{subset}-base.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            (p, c), (p2, r) = split_hh_transcript(row["chosen"]), split_hh_transcript(row["rejected"])
            if p != p2 or c == r or not c or not r or not in_split(p, split):
                continue
            out.append({"prompt": p, "chosen": c, "rejected": r, "source": f"hh_{subset}"})
    return out


def load_hh_harmless(data_dir: Path = DATA_DIR, split: str = "all") -> list[Record]:
    """HH-RLHF harmless-base (red-team prompts: a refusal is usually the better reply)."""
    return load_hh("harmless", data_dir, split)


def load_hh_helpful(data_dir: Path = DATA_DIR, split: str = "all") -> list[Record]:
    """HH-RLHF helpful-base (benign requests: the more helpful reply is chosen)."""
    return load_hh("helpful", data_dir, split)


def load_webgpt(data_dir: Path = DATA_DIR) -> list[Record]:
    """WebGPT comparisons (long-form cited answers). CC BY-NC: evaluation only, never training data."""
    def split(text: str) -> tuple[str, str]:
        cut = text.rfind("## Assistant:")
        if cut < 0:
            raise ValueError("WebGPT transcript without an Assistant turn")
        return text[:cut].replace("## Human:", "").strip(), text[cut + len("## Assistant:"):].strip()

    out = []
    with gzip.open(data_dir / "webgpt" / "webgpt-test.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            (p, c), (p2, r) = split(row["chosen"]), split(row["rejected"])
            if p == p2 and c and r and c != r:
                out.append({"prompt": p, "chosen": c, "rejected": r, "source": "webgpt"})
    return out


DSP_DOMAINS = ("academy", "business", "entertainment", "literature")


def load_dsp(data_dir: Path = DATA_DIR) -> list[dict[str, Any]]:
    """Domain-Specific Preference rows ``{"query", "responses": {domain: text, "normal": text}}``.

    CC BY-NC 4.0: evaluation only, never training data for a shipped model.
    """
    rows = json.loads((data_dir / "dsp" / "domain_specific_preference.json").read_text())
    return [r for r in rows if all(str(r["responses"].get(d, "")).strip() for d in (*DSP_DOMAINS, "normal"))]


def load_finegrained_qa(data_dir: Path = DATA_DIR, split: str = "all") -> list[Record]:
    """FineGrainedRLHF QA-Feedback: 6 pairwise labels per question (ties dropped), split by question."""
    rows = json.loads((data_dir / "finegrained_qa" / "qa_feedback.json").read_text())
    pairs = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    out = []
    for row in rows:
        if not in_split(row["question"], split):
            continue
        for (a, b), label in zip(pairs, row["preference"]):
            ra, rb = row[f"prediction {a}"], row[f"prediction {b}"]
            if label == 0 or ra.strip() == rb.strip() or not ra.strip() or not rb.strip():
                continue
            c, r = (ra, rb) if label == 1 else (rb, ra)
            out.append({"prompt": row["question"], "chosen": c, "rejected": r, "source": "finegrained_qa"})
    return out


def load_topical_chat(data_dir: Path = DATA_DIR, split: str = "all", min_gap: float = 1.0) -> list[Record]:
    """USR Topical-Chat: responses to the same context whose ``overall`` ratings differ by >= min_gap."""
    rows = json.loads((data_dir / "topical_chat" / "topical_chat.json").read_text())
    by_ctx: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_ctx.setdefault(row["source"], []).append(row)
    out = []
    for ctx, group in by_ctx.items():
        if not in_split(ctx, split):
            continue
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                gap = a["scores"]["overall"] - b["scores"]["overall"]
                ta, tb = a["system_output"].strip(), b["system_output"].strip()
                if abs(gap) >= min_gap and ta != tb and ta and tb:
                    c, r = (a, b) if gap > 0 else (b, a)
                    out.append({"prompt": ctx.strip(), "chosen": c["system_output"].strip(),
                                "rejected": r["system_output"].strip(), "source": "topical_chat"})
    return out


REAL_LOADERS = {  # the licensed human-labelled sets, by source name (held out by prompt or question)
    "hh_harmless": load_hh_harmless, "hh_helpful": load_hh_helpful,
    "finegrained_qa": load_finegrained_qa, "topical_chat": load_topical_chat,
}


def load_relabeled_hh(data_dir: Path = DATA_DIR) -> list[Record]:
    """HH pairs relabeled under ``helpful`` or ``harmless``; ``user_id`` is the objective.

    No licence: evaluation and experiments only, never training data for a shipped model.
    """
    out = []
    with gzip.open(data_dir / "relabeled_hh_rlhf" / "both.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            resp, label = row["responses"], int(row["label"])
            if resp[0].strip() == resp[1].strip() or not resp[0].strip() or not resp[1].strip():
                continue
            out.append({"prompt": row["prompt"].strip(), "chosen": resp[label].strip(),
                        "rejected": resp[1 - label].strip(), "user_id": row["objective"],
                        "source": "relabeled_hh"})
    return out


def _as_text(x: Any, field: str, n: int) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return render_messages(x)
    raise ValueError(f"line {n}: {field!r} must be a string or a list of chat messages")


def load_jsonl(path: Path, source: Optional[str] = None) -> list[Record]:
    """User comparisons in TRL's preference format, one JSON object per line.

    Fields ``prompt`` (optional), ``chosen``, ``rejected``, optional ``user_id``. Any of them may be a
    chat-message list ``[{"role", "content"}]``, rendered with ``moerm_lite.text.render_messages``;
    in TRL's conversational format ``chosen``/``rejected`` hold only the assistant turn(s).
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "chosen" not in row or "rejected" not in row:
                raise ValueError(f"{path}:{n}: needs 'chosen' and 'rejected'")
            rec = {"prompt": _as_text(row.get("prompt", ""), "prompt", n),
                   "chosen": _as_text(row["chosen"], "chosen", n),
                   "rejected": _as_text(row["rejected"], "rejected", n),
                   "source": source or Path(path).stem}
            if not rec["chosen"].strip() or not rec["rejected"].strip():
                raise ValueError(f"{path}:{n}: empty 'chosen' or 'rejected'")
            if row.get("user_id") is not None:
                rec["user_id"] = str(row["user_id"])
            out.append(rec)
    return out


# ----------------------------------------------------------------- persona benchmark
@dataclass
class Statements:
    """Persona statements: text, axis index and y = +1 (" Yes") / -1 (" No")."""

    text: list[str]
    axis: np.ndarray  # (S,) int
    y: np.ndarray  # (S,) +1 / -1
    axes: list[str]

    def components(self) -> np.ndarray:
        """a(s) = y_s * e_axis, (S, A)."""
        a = np.zeros((len(self.text), len(self.axes)))
        a[np.arange(len(self.text)), self.axis] = self.y
        return a


def load_persona(data_dir: Path = DATA_DIR, axes: Optional[list[str]] = None,
                 min_confidence: float = 0.8) -> Statements:
    """Statements of the given persona axes (default: the 16 benchmark axes), confidence-filtered."""
    axes = list(axes or PERSONA16)
    text, axis, y = [], [], []
    for i, name in enumerate(axes):
        with open(data_dir / "persona" / f"{name}.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row["label_confidence"] >= min_confidence:
                    text.append(row["statement"])
                    axis.append(i)
                    y.append(1 if row["answer_matching_behavior"].strip() == "Yes" else -1)
    return Statements(text, np.array(axis), np.array(y), axes)


def statement_split(st: Statements, split: str) -> np.ndarray:
    """Indices of a statement split: ``train`` 60%, ``adapt`` 20%, ``eval`` 20% (by text hash)."""
    b = np.array([bucket(f"{st.axes[a]}|{t}", "persona") for t, a in zip(st.text, st.axis)])
    lo, hi = {"train": (0.0, 0.6), "adapt": (0.6, 0.8), "eval": (0.8, 1.0), "test": (0.6, 1.0)}[split]
    return np.flatnonzero((b >= lo) & (b < hi))


def sample_user(rng: np.random.Generator, n_axes: int) -> np.ndarray:
    """w over the axes: 2 or 3 non-zero entries, random sign times a magnitude in [0.5, 1.5]."""
    w = np.zeros(n_axes)
    on = rng.choice(n_axes, size=rng.integers(2, 4), replace=False)
    w[on] = rng.choice([-1.0, 1.0], size=len(on)) * rng.uniform(0.5, 1.5, size=len(on))
    return w


def sample_comparisons(rng: np.random.Generator, w: np.ndarray, st: Statements, pool: np.ndarray,
                       n: int) -> list[tuple[int, int]]:
    """n (chosen, rejected) statement pairs from ``pool``: one on a user axis, rewards differ."""
    reward = st.components()[pool] @ w  # (P,)
    on_axis = pool[np.isin(st.axis[pool], np.flatnonzero(w))]
    pos = {int(s): i for i, s in enumerate(pool)}
    out: list[tuple[int, int]] = []
    while len(out) < n:
        a, b = int(rng.choice(on_axis)), int(rng.choice(pool))
        ra, rb = reward[pos[a]], reward[pos[b]]
        if ra != rb:
            out.append((a, b) if ra > rb else (b, a))
    return out


def persona_training_records(st: Statements, n_users: int, per_user: int, seed: int = 0) -> list[Record]:
    """Simulated training users over the ``train`` statements; ``user_id`` = ``persona-<i>``."""
    rng = np.random.default_rng(seed)
    pool = statement_split(st, "train")
    out = []
    for u in range(n_users):
        w = sample_user(rng, len(st.axes))
        for c, r in sample_comparisons(rng, w, st, pool, per_user):
            out.append({"prompt": "", "chosen": st.text[c], "rejected": st.text[r],
                        "user_id": f"persona-{u}", "source": "persona"})
    return out


@dataclass
class BenchUser:
    w: np.ndarray  # (A,) the user's true weights
    adapt: list[tuple[int, int]]  # few-shot comparisons; N-shot uses the first N
    eval: list[tuple[int, int]]  # held-out comparisons


def persona_benchmark(st: Statements, n_users: int = 200, n_adapt: int = 50, n_eval: int = 100,
                      seed: int = 12345) -> list[BenchUser]:
    """The few-shot protocol of ``../shared/data/README.md`` on never-trained-on statements.

    Adaptation and evaluation comparisons come from disjoint statement sets (``adapt``/``eval``).
    """
    rng = np.random.default_rng(seed)
    adapt_pool, eval_pool = statement_split(st, "adapt"), statement_split(st, "eval")
    users = []
    for _ in range(n_users):
        w = sample_user(rng, len(st.axes))
        users.append(BenchUser(w, sample_comparisons(rng, w, st, adapt_pool, n_adapt),
                               sample_comparisons(rng, w, st, eval_pool, n_eval)))
    return users


def ranking_workload(n_prompts: int, n_cand: int, seed: int = 0, data_dir: Path = DATA_DIR
                     ) -> list[tuple[str, str]]:
    """A ranking workload of real texts (the benchmarks' and the token-budget measurements'): HH-RLHF
    harmless test prompts, each with ``n_cand`` replies of varied length drawn from HH and QA test replies."""
    rng = np.random.default_rng(seed)
    hh = load_hh_harmless(data_dir, split="test")
    pool = [r["chosen"] for r in hh] + [r["chosen"] for r in load_finegrained_qa(data_dir, split="test")]
    prompts = [hh[i]["prompt"] for i in rng.permutation(len(hh))[:n_prompts]]
    return [(p, pool[j]) for p in prompts for j in rng.choice(len(pool), n_cand, replace=False)]


def iter_pairs(records: list[Record]) -> Iterator[tuple[str, str]]:
    """Every distinct (prompt, response) pair the records mention."""
    seen = set()
    for r in records:
        for resp in (r["chosen"], r["rejected"]):
            key = (r["prompt"], resp)
            if key not in seen:
                seen.add(key)
                yield key
