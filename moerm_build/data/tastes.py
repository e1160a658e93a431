"""Taste families: simulated users with tastes nobody trained on, to check personalization family-out.

A *taste family* is a kind of taste (``TASTE_FAMILIES``); each *member* is one measurable property of a
reply, computed from its text alone, per 100 words unless said otherwise:

- ``topic``: words of a vocabulary field (food, money, health, technology, travel, family, nature, time,
  feelings, home, learning, body) — a user who likes (or avoids) talk of that field;
- ``rhetoric``: questions back to the reader, first person singular, "we", examples ("for example",
  "such as"), reasons ("because", "since"), contrasts ("but", "however");
- ``structure``: paragraphs (log), mean sentence length (log words), parentheses, colons, quotations;
- ``specificity``: digits, capitalised words inside a sentence (names), long words (9+ letters), units
  and amounts;
- ``courtesy``: thanks and apologies, "please", greetings, wishes ("hope", "enjoy", "good luck").

A user is one member of one family with a random sign: it prefers, between two replies to the same
prompt, the one with more (or less) of that property, when the two differ by at least a quarter of the
property's standard deviation on the pool (``moerm_build.data.attributes.user_comparisons``). No build
trains on these users (``moerm_build.train.train`` has no such source), so every family is held out;
``moerm_build.evaluate.real_eval.taste_users`` reports each family's users fitted from N comparisons
next to a logistic probe on the frozen pair features fitted on the same N (``probe_few_shot``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")

FIELDS: dict[str, str] = {
    "food": "food eat eating cook cooking recipe meal dinner lunch breakfast bread cheese meat chicken rice "
            "vegetables fruit sugar salt butter oil bake kitchen taste delicious sauce soup",
    "money": "money pay paid price cost costs dollars cheap expensive budget buy sell bank loan debt tax "
             "income salary save savings invest credit afford",
    "health": "health healthy doctor sick pain disease exercise sleep stress medicine symptoms hospital "
              "weight diet body heart blood therapy mental",
    "technology": "computer software app phone internet online data code program website device digital "
                  "technology email file system download screen",
    "travel": "travel trip visit city country flight hotel beach tour tourist airport road drive car train "
              "map vacation abroad",
    "family": "family mother father mom dad parents child children kids son daughter brother sister wife "
              "husband baby grandparents relatives",
    "nature": "nature tree trees plant plants garden flower flowers water river mountain animal animals dog "
              "cat bird forest weather sun rain",
    "time": "time hour hours minute minutes day days week weeks month months year years morning evening "
            "night today tomorrow soon later",
    "feelings": "feel feeling feelings happy sad angry afraid fear love hate worried anxious excited lonely "
                "upset emotions emotional hurt",
    "home": "home house room bed door window wall floor clean cleaning furniture apartment rent kitchen "
            "bathroom neighbor",
    "learning": "learn learning study school student students teacher class course book books read reading "
                "practice skill skills knowledge",
    "body": "hand hands head eyes face hair skin feet legs arm arms back muscle muscles teeth",
}


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _rate(words: list[str], vocab: frozenset[str]) -> float:
    return 100.0 * sum(w in vocab for w in words) / max(len(words), 1)


def _phrase_rate(text: str, words: list[str], pattern: str) -> float:
    return 100.0 * len(re.findall(pattern, text.lower())) / max(len(words), 1)


def _field(vocab: str) -> Callable[[str, list[str]], float]:
    v = frozenset(vocab.split())
    return lambda text, words: _rate(words, v)


def _phrases(pattern: str) -> Callable[[str, list[str]], float]:
    return lambda text, words: _phrase_rate(text, words, pattern)


TASTE_FAMILIES: dict[str, dict[str, Callable[[str, list[str]], float]]] = {
    "topic": {name: _field(vocab) for name, vocab in FIELDS.items()},
    "rhetoric": {
        "questions": lambda t, w: 100.0 * t.count("?") / max(len(w), 1),
        "first_person": _field("i me my mine myself"),
        "we": _field("we us our ours ourselves"),
        "examples": _phrases(r"\b(for example|for instance|such as|e\.g\.)"),
        "reasons": _phrases(r"\b(because|since|therefore|so that)\b"),
        "contrasts": _phrases(r"\b(but|however|although|though|whereas)\b"),
    },
    "structure": {
        "paragraphs": lambda t, w: float(np.log1p(len([p for p in re.split(r"\n\s*\n", t) if p.strip()]))),
        "sentence_length": lambda t, w: float(np.log1p(len(w) / max(1, len(re.findall(r"[.!?]+(\s|$)", t + " "))))),
        "parentheses": lambda t, w: 100.0 * t.count("(") / max(len(w), 1),
        "colons": lambda t, w: 100.0 * t.count(":") / max(len(w), 1),
        "quotations": lambda t, w: 100.0 * (t.count('"') + t.count("“")) / max(len(w), 1),
    },
    "specificity": {
        "digits": lambda t, w: 100.0 * len(re.findall(r"\d+", t)) / max(len(w), 1),
        "names": lambda t, w: 100.0 * len(re.findall(r"(?<=[a-z,;] )[A-Z][a-z]+", t)) / max(len(w), 1),
        "long_words": lambda t, w: 100.0 * sum(len(x) >= 9 for x in w) / max(len(w), 1),
        "amounts": _phrases(r"\b\d+(\.\d+)?\s?(%|percent|minutes|hours|days|years|cups?|grams?|kg|miles|km|"
                            r"dollars|pounds|degrees)\b|\$\d"),
    },
    "courtesy": {
        "thanks_apologies": _field("thanks thank sorry apologize apologies appreciate grateful"),
        "please": _field("please kindly"),
        "greetings": _field("hi hello hey welcome"),
        "wishes": _field("hope enjoy luck wish wishes glad"),
    },
}
MEMBERS: list[tuple[str, str]] = [(f, m) for f, members in TASTE_FAMILIES.items() for m in members]


def taste_matrix(texts: Sequence[str]) -> np.ndarray:
    """Every member's raw value for each text, (R, M) in ``MEMBERS`` order."""
    out = np.zeros((len(texts), len(MEMBERS)))  # (R, M)
    for i, t in enumerate(texts):
        w = _words(t)
        out[i] = [TASTE_FAMILIES[f][m](t, w) for f, m in MEMBERS]
    return out


def taste_pool(pool: Any) -> Any:
    """An ``moerm_build.data.attributes.ResponsePool`` whose ``z`` holds the standardised taste members (R, M)."""
    T = taste_matrix(pool.responses)  # (R, M)
    sd = T.std(0)  # (M,)
    z = np.divide(T - T.mean(0), sd, out=np.zeros_like(T), where=sd > 1e-9 * (1 + np.abs(T).max(0)))
    return replace(pool, z=z)  # a member constant on the pool stays 0


def taste_benchmark(pool: Any, family: str, n_users: int = 100, n_adapt: int = 50, n_eval: int = 100,
                    seed: int = 2468) -> list[Any]:
    """Users of one family (a random member, a random sign) on a taste pool (``taste_pool``): adaptation
    comparisons from one half of the prompts, evaluation from the other (as ``attribute_benchmark``)."""
    from moerm_build.data import BenchUser, bucket
    from moerm_build.data.attributes import user_comparisons

    members = [j for j, (f, _) in enumerate(MEMBERS) if f == family]
    if not members:
        raise ValueError(f"unknown taste family {family!r}; choose from {list(TASTE_FAMILIES)}")
    rng = np.random.default_rng(seed)
    half = np.array([bucket(p, "taste-bench") < 0.5 for p in pool.prompts])
    adapt_pairs, eval_pairs = pool.pairs(np.flatnonzero(half)), pool.pairs(np.flatnonzero(~half))
    users: list[Any] = []
    for _ in range(20 * n_users):
        if len(users) == n_users:
            break
        w = np.zeros(len(MEMBERS))
        w[int(rng.choice(members))] = rng.choice([-1.0, 1.0])
        a = user_comparisons(rng, w, pool, adapt_pairs, n_adapt)
        e = user_comparisons(rng, w, pool, eval_pairs, n_eval)
        if len(a) == n_adapt and len(e) >= n_eval // 2:  # a member the pool barely varies on: redraw
            users.append(BenchUser(w, a, e))
    return users
