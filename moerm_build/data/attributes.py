"""Measurable attributes of real response texts, and simulated users who care about them.

Pure Python text statistics, deterministic, build side only (the runtime never computes them).
Each attribute is a number per response; users weigh 1-3 of them (standardised on the training
pool) with random signs, exactly as persona users weigh persona axes, and compare real responses
to the same prompt.

| attribute | what it measures |
|---|---|
| ``verbosity`` | log(1 + words) |
| ``structure`` | log(1 + list items, headings and bold spans): markdown layout |
| ``reading_level`` | Flesch-Kincaid grade (words per sentence, syllables per word) |
| ``enthusiasm`` | exclamation marks and enthusiastic words per 100 words |
| ``hedging`` | hedges ("might", "probably", "I think") per 100 words |
| ``addressing`` | second-person words ("you", "your") per 100 words |
| ``code`` | code signals: fences, inline code, code-like lines |
| ``formality`` | minus contractions and informal words per 100 words |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ATTRIBUTES = ("verbosity", "structure", "reading_level", "enthusiasm", "hedging", "addressing", "code",
              "formality")
MARGIN = 0.25  # a simulated user notices a difference of a quarter of a standard deviation
ATTRIBUTE_WORDS = {  # what an expert whose gated reward rises (+) or falls (-) with the attribute rewards
    "verbosity": ("longer replies", "shorter replies"),
    "structure": ("lists and markdown", "plain prose"),
    "reading_level": ("harder reading level", "simpler wording"),
    "enthusiasm": ("enthusiastic tone", "calm tone"),
    "hedging": ("hedged, cautious wording", "assertive wording"),
    "addressing": ("speaking to the reader", "impersonal wording"),
    "code": ("code", "no code"),
    "formality": ("formal wording", "casual wording"),
}

_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_LIST_OR_HEADING = re.compile(r"^\s*(?:[-*•+]\s+\S|\d{1,3}[.)]\s+\S|#{1,6}\s+\S)", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")
_CODE_LINE = re.compile(r"^\s*(?:def |class |import |from \S+ import|for .+:|if .+:|return\b|\w+\s*=\s*\S|"
                        r"[{}]\s*$|.*;\s*$|print\()", re.M)
ENTHUSIASTIC = frozenset("great amazing awesome wonderful fantastic love excited exciting glad happy "
                         "delighted absolutely definitely excellent incredible superb thrilled".split())
HEDGES = frozenset("might may perhaps possibly probably likely seems seem maybe could generally usually "
                   "somewhat arguably apparently suggest suggests".split())
HEDGE_PHRASES = ("i think", "i believe", "not sure", "it depends", "in some cases", "to some extent")
SECOND_PERSON = frozenset("you your you're youre yours yourself yourselves you'll you've you'd".split())
INFORMAL = frozenset("yeah yep nope gonna wanna gotta kinda sorta ok okay hey lol stuff guys cool "
                     "awesome totally".split())


def words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def syllables(word: str) -> int:
    """Vowel groups, minus a silent final e; at least 1."""
    w = word.lower().strip("'")
    n = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee")) and n > 1:
        n -= 1
    return max(1, n)


def reading_level(text: str) -> float:
    """Flesch-Kincaid grade level: 0.39 words/sentence + 11.8 syllables/word - 15.59."""
    ws = words(text)
    if not ws:
        return 0.0
    sentences = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    return 0.39 * len(ws) / sentences + 11.8 * sum(syllables(w) for w in ws) / len(ws) - 15.59


def per_100(count: float, n_words: int) -> float:
    return 100.0 * count / max(n_words, 10)  # short texts: no huge rates from one word


def attributes(text: str) -> dict[str, float]:
    """Every attribute of one response text."""
    ws = words(text)
    n = len(ws)
    low = text.lower()
    hedges = sum(w in HEDGES for w in ws) + sum(low.count(p) for p in HEDGE_PHRASES)
    code = 3 * text.count("```") + text.count("`") + len(_CODE_LINE.findall(text))
    contractions = sum("'" in w for w in ws)
    return {
        "verbosity": float(np.log1p(n)),
        "structure": float(np.log1p(len(_LIST_OR_HEADING.findall(text)) + len(_BOLD.findall(text)))),
        "reading_level": float(np.clip(reading_level(text), -5.0, 25.0)),
        "enthusiasm": per_100(text.count("!") + sum(w in ENTHUSIASTIC for w in ws), n),
        "hedging": per_100(hedges, n),
        "addressing": per_100(sum(w in SECOND_PERSON for w in ws), n),
        "code": float(np.log1p(code)),
        "formality": -per_100(contractions + sum(w in INFORMAL for w in ws), n),
    }


def attribute_matrix(texts: Sequence[str]) -> np.ndarray:
    """(N, A) attributes in ``ATTRIBUTES`` order."""
    return np.array([[attributes(t)[a] for a in ATTRIBUTES] for t in texts], dtype=np.float64).reshape(
        len(texts), len(ATTRIBUTES))


@dataclass
class Scaler:
    """Standardisation of attributes, fitted on the training pool: z = (a - mean) / std."""

    mean: np.ndarray  # (A,)
    std: np.ndarray  # (A,)

    @classmethod
    def fit(cls, A: np.ndarray) -> Scaler:
        std = A.std(0)
        return cls(A.mean(0), np.where(std > 0, std, 1.0))

    def __call__(self, A: np.ndarray) -> np.ndarray:
        return (A - self.mean) / self.std


@dataclass
class ResponsePool:
    """Real responses grouped by prompt: the comparisons attribute users make are within a group."""

    prompts: list[str]
    responses: list[str]
    group: np.ndarray  # (R,) prompt index of each response
    z: np.ndarray  # (R, A) standardised attributes

    @classmethod
    def build(cls, records: Sequence[dict[str, Any]], scaler: Scaler | None = None,
              groups: dict[str, list[str]] | None = None) -> tuple[ResponsePool, Scaler]:
        """From comparison records (their chosen and rejected replies) and/or ``{prompt: [responses]}``."""
        by_prompt: dict[str, list[str]] = {}
        for r in records:
            for key in ("chosen", "rejected"):
                lst = by_prompt.setdefault(r["prompt"], [])
                if r[key] not in lst:
                    lst.append(r[key])
        for p, rs in (groups or {}).items():
            lst = by_prompt.setdefault(p, [])
            lst += [x for x in rs if x not in lst]
        prompts = sorted(p for p, rs in by_prompt.items() if len(rs) >= 2)
        responses, group = [], []
        for i, p in enumerate(prompts):
            responses += by_prompt[p]
            group += [i] * len(by_prompt[p])
        A = attribute_matrix(responses)
        scaler = scaler or Scaler.fit(A)
        return cls(prompts, responses, np.array(group, dtype=int), scaler(A)), scaler

    def pairs(self, prompt_idx: np.ndarray) -> np.ndarray:
        """All (i, j), i < j, of responses to the same prompt among ``prompt_idx``, (P, 2)."""
        out = []
        keep = set(int(x) for x in prompt_idx)
        members: dict[int, list[int]] = {}
        for r, g in enumerate(self.group):
            if int(g) in keep:
                members.setdefault(int(g), []).append(r)
        for rs in members.values():
            out += [(a, b) for k, a in enumerate(rs) for b in rs[k + 1:]]
        return np.array(out, dtype=int).reshape(-1, 2)


def pair_order(pool: ResponsePool, pred: np.ndarray, a: int, margin: float = MARGIN) -> float:
    """Share of the pool's same-prompt reply pairs whose attribute ``a`` differs by at least ``margin`` (std
    units, as users notice) that a prediction ``pred`` (R,) of it puts in the right order; ties count half."""
    pairs = pool.pairs(np.arange(len(pool.prompts)))  # (P, 2)
    gap = pool.z[pairs[:, 0], a] - pool.z[pairs[:, 1], a]  # (P,)
    keep = np.abs(gap) >= margin
    d = pred[pairs[keep, 0]] - pred[pairs[keep, 1]]  # (P',)
    return float(np.mean((np.sign(d) == np.sign(gap[keep])) + 0.5 * (d == 0)))


def sample_attribute_user(rng: np.random.Generator, n_attributes: int | None = None) -> np.ndarray:
    """w over the attributes: 1-3 (or ``n_attributes``) non-zero entries, random sign times [0.5, 1.5]."""
    A = len(ATTRIBUTES)
    k = int(rng.integers(1, 4)) if n_attributes is None else n_attributes
    w = np.zeros(A)
    on = rng.choice(A, size=k, replace=False)
    w[on] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.5, 1.5, size=k)
    return w


def user_comparisons(rng: np.random.Generator, w: np.ndarray, pool: ResponsePool, pairs: np.ndarray, n: int,
                     margin: float = MARGIN) -> list[tuple[int, int]]:
    """n (chosen, rejected) response pairs whose user rewards differ by at least ``margin`` (in std units:
    a user notices the difference). Fewer if the pool has fewer such pairs."""
    reward = pool.z @ w  # (R,)
    gap = reward[pairs[:, 0]] - reward[pairs[:, 1]]  # (P,)
    ok = pairs[np.abs(gap) >= margin]
    take = ok[rng.permutation(len(ok))[:n]]
    return [(int(a), int(b)) if reward[a] > reward[b] else (int(b), int(a)) for a, b in take]


def attribute_training_records(pool: ResponsePool, n_users: int, per_user: int,
                               seed: int = 0) -> list[dict[str, Any]]:
    """Simulated training users over the attributes; ``user_id`` = ``attribute-<i>``."""
    rng = np.random.default_rng(seed + 1)
    pairs = pool.pairs(np.arange(len(pool.prompts)))
    out = []
    for u in range(n_users):
        w = sample_attribute_user(rng)
        for c, r in user_comparisons(rng, w, pool, pairs, per_user):
            p = pool.prompts[pool.group[c]]
            out.append({"prompt": p, "chosen": pool.responses[c], "rejected": pool.responses[r],
                        "user_id": f"attribute-{u}", "source": "attribute_users"})
    return out


def attribute_benchmark(pool: ResponsePool, n_users: int = 100, n_attributes: int | None = None,
                        n_adapt: int = 50, n_eval: int = 100, seed: int = 4321,
                        attribute: int | None = None) -> list[Any]:
    """Few-shot users over the attributes on a held-out pool, like ``data.persona_benchmark``.

    The pool's prompts are split in half by a hash: adaptation comparisons come from one half,
    evaluation comparisons from the other. ``n_attributes`` = 1 for single-attribute users, None for
    2-3 attributes; ``attribute`` (an index) makes every user weigh that one attribute, either sign.
    """
    from moerm_build.data import BenchUser, bucket

    rng = np.random.default_rng(seed)
    half = np.array([bucket(p, "attribute-bench") < 0.5 for p in pool.prompts])
    adapt_pairs, eval_pairs = pool.pairs(np.flatnonzero(half)), pool.pairs(np.flatnonzero(~half))
    users: list[Any] = []
    tries = 0
    while len(users) < n_users:
        if attribute is None:
            w = sample_attribute_user(rng, n_attributes if n_attributes is not None else int(rng.integers(2, 4)))
        else:
            w = np.zeros(len(ATTRIBUTES))
            w[attribute] = rng.choice([-1.0, 1.0])
        a = user_comparisons(rng, w, pool, adapt_pairs, n_adapt)
        e = user_comparisons(rng, w, pool, eval_pairs, n_eval)
        if len(a) == n_adapt and len(e) >= n_eval // 2:  # attributes a pool barely varies on: redraw
            users.append(BenchUser(w, a, e))
        elif attribute is not None and tries > 20 * n_users:
            break  # this attribute hardly varies in the pool: fewer users
        tries += 1
    return users
