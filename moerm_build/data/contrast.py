"""Generated contrast pairs: a real answer against an obviously worse reply to the same prompt.

Four kinds, built from licensed real (prompt, answer) pairs of *benign* requests:

- ``offtopic``: the answer to a different prompt of the same pool;
- ``nonanswer``: "I don't know."-style replies;
- ``dismissive``: "Just google it."-style replies;
- ``truncated``: the first 15-40% of the answer's words.

Harmful requests are never used: on a red-team prompt (HH-RLHF harmless-base) a refusal is usually
the better reply, so a refusal must never be the "worse" side there. ``contrast_records`` refuses
records from such sources, and skips answers that are themselves refusals or non-answers.

Training uses the ``TRAIN`` phrasings; the held-out sanity suite (``sanity_suite``) uses the
``HELD_OUT`` phrasings, other prompts and a fixed six-word truncation, so it measures what the
model learned, not what it memorised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

KINDS = ("offtopic", "nonanswer", "dismissive", "truncated")
HARMFUL_SOURCES = frozenset({"hh_harmless", "relabeled_hh"})  # red-team prompts: refusing is often right

def _compose(openers: list[str], cores: list[str], closers: list[str]) -> list[str]:
    return [f"{o}{c}{z}".strip() for o in openers for c in cores for z in closers]


TRAIN = {  # composed, so that no single phrasing is memorised: 5 x 10 x 4 = 200 variants each
    "nonanswer": _compose(["", "Hmm, ", "Sorry, ", "Honestly, ", "Well, "],
                          ["I don't know.", "I'm not sure.", "I have no idea.", "I can't answer that.",
                           "I really couldn't say.", "I don't really know anything about that.",
                           "that's a good question, but I don't know.", "I'm not sure about that one.",
                           "I can't tell you.", "no idea."],
                          ["", " Sorry.", " Maybe ask someone else.", " Good luck with it."]),
    "dismissive": _compose(["", "Ugh. ", "Come on. ", "Meh. ", "Seriously, "],
                           ["Just google it.", "Who cares?", "Figure it out yourself.", "That's a dumb question.",
                            "Not my problem.", "Why would you even ask that?", "Whatever.", "Look it up.",
                            "I'm not going to bother with that.", "Ask somebody else, I'm busy."],
                           ["", " Bye.", " Don't waste my time.", " Next question."]),
}
HELD_OUT = {
    "nonanswer": ["Unfortunately I do not know the answer.", "No clue.", "I am unable to say.", "Beats me.",
                  "I'm afraid I can't tell you.", "Honestly, I have never heard of that."],
    "dismissive": ["Search the web, it's not hard.", "This isn't worth my time.", "Do your own homework.",
                   "Seriously? Everyone knows that.", "Go read a book.", "Stop asking me things like this."],
}
_EVASIVE = re.compile(
    r"\b(i (do not|don'?t|really don'?t) know|i'?m not sure|not sure|no idea|i can'?t (help|answer|tell)|"
    r"i (cannot|won'?t)|i'?m sorry|sorry,|as an ai|i'?m not able|i am not able|unable to)\b", re.I)


def is_evasive(text: str) -> bool:
    """True for refusals and non-answers (which must not serve as the "real answer")."""
    return bool(_EVASIVE.search(text[:200].replace("’", "'")))


def real_answers(records: Sequence[dict[str, Any]], min_words: int = 8) -> list[tuple[str, str, str]]:
    """Distinct ``(prompt, answer, source)`` of chosen replies that are real answers to benign prompts."""
    seen, out = set(), []
    for i, r in enumerate(records):
        src = str(r.get("source", ""))
        if src in HARMFUL_SOURCES:
            raise ValueError(f"record {i} comes from {src!r}: harmful prompts are never used for contrast "
                             "pairs (a refusal is often the better reply there)")
        p, a = r["prompt"], r["chosen"]
        if p.strip() and p not in seen and len(a.split()) >= min_words and not is_evasive(a):
            seen.add(p)
            out.append((p, a, src))
    return out


def truncate_words(text: str, fraction: float, min_words: int = 3) -> str:
    """The first ``fraction`` of a text's words (at least ``min_words``)."""
    words = text.split()
    return " ".join(words[:max(min_words, int(len(words) * fraction))])


def worse_reply(kind: str, answer: str, other_answer: str, rng: np.random.Generator,
                phrases: dict[str, list[str]]) -> str | None:
    """One worse reply of ``kind`` for a real answer, or None when the kind does not apply."""
    if kind == "offtopic":
        return other_answer
    if kind == "truncated":
        if len(answer.split()) < 12:
            return None
        return truncate_words(answer, float(rng.uniform(0.15, 0.4)))
    if kind in phrases:
        return str(rng.choice(phrases[kind]))
    raise ValueError(f"unknown contrast kind {kind!r}; choose from {KINDS}")


def contrast_records(records: Sequence[dict[str, Any]], kinds: Sequence[str] = KINDS, seed: int = 0,
                     phrases: dict[str, list[str]] = TRAIN, per_prompt: int | None = None) -> list[dict[str, Any]]:
    """Population records ``{"prompt", "chosen": real answer, "rejected": worse, "source": "contrast:<kind>"}``.

    One record per kind (or ``per_prompt`` random kinds) per distinct benign prompt with a real answer;
    ``offtopic`` takes the answer of another prompt (a random derangement of the pool).
    """
    rng = np.random.default_rng(seed)
    answers = real_answers(records)
    if len(answers) < 2:
        return []
    shift = rng.permutation(len(answers))
    other = {int(shift[i]): int(shift[(i + 1) % len(shift)]) for i in range(len(shift))}  # a derangement
    out = []
    for i, (p, a, _) in enumerate(answers):
        mine = (kinds if per_prompt is None or per_prompt >= len(kinds)
                else [kinds[j] for j in sorted(rng.permutation(len(kinds))[:per_prompt])])
        for kind in mine:
            worse = worse_reply(kind, a, answers[other[i]][1], rng, phrases)
            if worse is not None and worse.strip() and worse != a:
                out.append({"prompt": p, "chosen": a, "rejected": worse, "source": f"contrast:{kind}"})
    return out


def sanity_suite(prompts: Sequence[str], answers: Sequence[str], seed: int = 1) -> list[dict[str, Any]]:
    """The held-out check: each real answer against each worse kind, with the ``HELD_OUT`` phrasings and a
    fixed six-word truncation. Rows ``{"prompt", "chosen", "rejected", "kind"}``."""
    rng = np.random.default_rng(seed)
    n = len(prompts)
    out = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        worse = {"offtopic": answers[(i + 1 + int(rng.integers(n - 1))) % n] if n > 1 else None,
                 "nonanswer": str(rng.choice(HELD_OUT["nonanswer"])),
                 "dismissive": str(rng.choice(HELD_OUT["dismissive"])),
                 "truncated": " ".join(a.split()[:6]) if len(a.split()) >= 12 else None}
        out += [{"prompt": p, "chosen": a, "rejected": w, "kind": k} for k, w in worse.items()
                if w is not None and w != a]
    return out
