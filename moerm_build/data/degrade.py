"""Degradation families: worse replies made from a real answer, for training and for family-out checks.

A *family* is one way a reply can be worse than the real answer to the same prompt. Each family has
many variants (random choices, phrase pools), so a model that learns one family learns a kind of
failure, not a list of texts. The families (``FAMILIES``):

- word order: ``word_shuffle`` (the answer's own words in random order), ``sentence_shuffle``;
- ``repetition``: the answer twice, a sentence looped, a phrase looped;
- ``echo``: the request back, verbatim or in a frame ("You asked: ...");
- ``terse``: one or two words ("Nothing.", "No.", "Do something.");
- ``generic``: empty generalities that fit any request;
- ``refusal``: a refusal of a harmless request;
- ``nonanswer`` / ``dismissive``: "I don't know." / "Just google it." (``moerm_build.data.contrast``'s phrasings);
- ``offtopic``: the answer to a random other prompt; ``neighbour``: the answer to the most similar
  other prompt (same words, other question);
- ``truncation``: the first 15-40% of the answer;
- ``negation``: the answer's claims negated ("is" -> "is not", "can" -> "cannot", "not" dropped);
- ``entity_swap``: its numbers changed and its names swapped for names from other answers;
- ``padding``: the answer buried in filler sentences;
- ``mixed_language``: the answer with sentences in another language in place of its own.

*Word noise* (``noise_records``) is not a family: a share of the answer's words replaced by words of other
answers, deleted at random, or followed by words of other answers. It names no kind of failure, so training
on it leaves every family held out (docs/decisions/bad-replies.md, "Generic corruptions instead of a list"
and "Word noise in the model's read-out").

Phrase pools are split: ``split="train"`` draws from the first two thirds of each pool, ``"test"`` from
the rest, so a family-out check never meets a training phrasing. Harmful prompts are never used
(``moerm_build.data.contrast.real_answers`` refuses them): there a refusal is often the better reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from moerm_build.data.contrast import HELD_OUT, TRAIN, real_answers

FAMILIES = ("word_shuffle", "sentence_shuffle", "repetition", "echo", "terse", "generic", "refusal",
            "nonanswer", "dismissive", "offtopic", "neighbour", "truncation", "negation", "entity_swap",
            "padding", "mixed_language")
SPLITS = ("train", "test")

POOLS: dict[str, list[str]] = {
    "terse": ["Maybe.", "Sure.", "Okay.", "Yes.", "Not really.", "Many things.", "Sometimes.", "Stuff.",
              "It depends.", "Good question.", "Hmm.", "Whatever works.", "Try things.", "Something.",
              "Various options.", "Be creative.", "Think about it.", "Lots.",
              "Nothing.", "No.", "Do something.", "Anything.", "Who knows.", "Whatever.", "Fine.",
              "Try it.", "Just do it."],
    "generic": [
        "There are many factors to consider here, and it really depends on your situation.",
        "That is an interesting topic with a lot of different perspectives.",
        "Everyone is different, so what works for one person may not work for another.",
        "It is important to think carefully about this and weigh your options.",
        "There is no single right answer; it comes down to your preferences and goals.",
        "This is something many people wonder about, and opinions vary widely.",
        "You should consider all the relevant aspects before making a decision.",
        "In general, it is best to do what feels right for you in your circumstances.",
        "There are pros and cons to every approach, so keep an open mind.",
        "It can be a complex question, and the answer changes from case to case.",
        "Many things could play a role here, so it is hard to say in general.",
        "Ultimately, it is up to you and what you value most.",
    ],
    "refusal": [
        "I'm sorry, but I can't help with that request.",
        "I won't be able to assist with this.",
        "Unfortunately, that is something I cannot help you with.",
        "I'm not able to provide that information.",
        "Sorry, I can't do that for you.",
        "I must decline to answer this request.",
        "I'm afraid I can't assist with that.",
        "That's not something I can help with, sorry.",
        "I cannot respond to this request.",
    ],
    "echo_frame": ["You asked: {q}", "So your question is: {q}", "{q} That is what you want to know.",
                   "Good question. {q}", "Let me repeat the question: {q}", "{q} {q}",
                   "Question: {q}", "You want to know this: {q}", "Hmm, {q}"],
    "filler": [
        "I hope this helps.", "Let me know if you have any other questions.", "Thanks for asking!",
        "This is a great question that many people ask.", "There is a lot more one could say about this.",
        "As always, it is good to keep learning.", "Have a wonderful day!", "Feel free to ask me anything.",
        "I am always happy to help with questions like this.", "Remember that everyone starts somewhere.",
        "Questions like this come up all the time.", "It is worth thinking about from time to time.",
        "Wishing you all the best with it.", "Take care and stay curious!", "That is all for now.",
    ],
    "foreign": [
        "Das ist eine sehr gute Frage, und die Antwort ist nicht ganz einfach.",
        "Je pense que c'est une bonne idée de commencer par le début.",
        "Es importante tener en cuenta todos los detalles antes de decidir.",
        "Questo dipende molto dalla situazione e dalle preferenze personali.",
        "Ich empfehle, sich zuerst gut zu informieren und dann zu entscheiden.",
        "Il faut prendre le temps de bien réfléchir avant de commencer.",
        "Normalmente la gente prefiere hacerlo poco a poco y con calma.",
        "Dit is meestal de beste manier om het aan te pakken.",
        "Man sollte dabei immer auf die eigene Erfahrung achten.",
        "Le plus simple est souvent de demander à quelqu'un qui sait.",
        "Hay muchas maneras de hacerlo y todas tienen ventajas.",
        "È meglio provare diverse soluzioni e vedere cosa funziona.",
    ],
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_NAME = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]{2,}\b")  # a capitalised word inside a sentence
_NEGATE = [(re.compile(p, re.I), r) for p, r in [
    (r"\b(is|are|was|were|will|would|should|could|does|do|did|has|have|must) not\b", r"\1"),
    (r"\b(can)not\b", r"\1"), (r"\b(is|are|was|were|does|do|did)n't\b", r"\1"),
    (r"\b(is|are|was|were|will|should|would|could|must)\b(?! not)", r"\1 not"),
    (r"\b(can)\b(?!not)", r"\1not")]]


def phrases(name: str, split: str) -> list[str]:
    """A phrase pool's ``split`` share: the first two thirds for "train", the rest for "test"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = POOLS[name]
    cut = (2 * len(pool)) // 3
    return pool[:cut] if split == "train" else pool[cut:]


def sentences(text: str) -> list[str]:
    """A text's sentences (split after ., ! or ? followed by white space, and at line breaks)."""
    return [s for s in _SENTENCE.split(text.strip()) if s]


def last_request(prompt: str) -> str:
    """The user's last turn of a prompt (an HH transcript's last ``Human:`` turn, else the whole text)."""
    cut = prompt.rfind("Human:")
    text = prompt[cut + len("Human:"):] if cut >= 0 else prompt
    return text.split("\n\nAssistant:")[0].strip()


@dataclass
class Pool:
    """The real answers degradations draw on: ``prompts[i]``'s real answer is ``answers[i]``;
    ``neighbours[i]`` is the other prompt most like prompt i (TF-IDF cosine of their words)."""

    prompts: list[str]
    answers: list[str]
    neighbours: np.ndarray  # (n,) int

    @classmethod
    def build(cls, prompts: Sequence[str], answers: Sequence[str]) -> Pool:
        if len(prompts) != len(answers) or len(prompts) < 2:
            raise ValueError(f"a Pool needs at least 2 (prompt, answer) pairs of equal count, got "
                             f"{len(prompts)} prompts and {len(answers)} answers")
        from scipy import sparse

        docs = [set(re.findall(r"[a-z]{3,}", last_request(p).lower())) for p in prompts]
        vocab = {w: j for j, w in enumerate(sorted(set().union(*docs)))}
        rows = [i for i, d in enumerate(docs) for _ in d]
        cols = [vocab[w] for d in docs for w in d]
        M = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(docs), max(len(vocab), 1)))
        idf = np.log((1 + len(docs)) / (1 + np.asarray(M.sum(0)).ravel())) + 1  # (V,)
        M = sparse.csr_matrix(M.multiply(idf[None, :]))
        norm = np.sqrt(np.asarray(M.multiply(M).sum(1)).ravel()) + 1e-12  # (n,)
        S = (M @ M.T).toarray() / norm[:, None] / norm[None, :]  # (n, n)
        np.fill_diagonal(S, -np.inf)
        for i in range(len(answers)):  # the same answer under another prompt is no degradation
            S[i, [j for j in range(len(answers)) if answers[j] == answers[i]]] = -np.inf
        return cls(list(prompts), list(answers), S.argmax(1))


def _shuffled(parts: list[str], rng: np.random.Generator) -> str:
    """``parts`` joined in a random order other than their own (at least two parts)."""
    order = rng.permutation(len(parts))
    while (order == np.arange(len(parts))).all():
        order = rng.permutation(len(parts))
    return " ".join(parts[j] for j in order)


def _word_shuffle(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    words = pool.answers[i].split()
    return _shuffled(words, rng) if len(words) >= 4 else None


def _sentence_shuffle(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    sents = sentences(pool.answers[i])
    return _shuffled(sents, rng) if len(sents) >= 3 else None


def _repetition(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    answer, sents = pool.answers[i], sentences(pool.answers[i])
    variant = int(rng.integers(3))
    if variant == 0:  # the answer written out again
        return f"{answer} {answer}"
    if variant == 1:  # one of its sentences looped after it
        s = sents[int(rng.integers(len(sents)))]
        return " ".join([answer] + [s] * int(rng.integers(3, 7)))
    words = answer.split()  # a phrase of it looped, nothing else
    n = min(len(words), int(rng.integers(3, 7)))
    start = int(rng.integers(len(words) - n + 1))
    return " ".join([" ".join(words[start:start + n])] * int(rng.integers(5, 11)))


def _echo(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    q = last_request(pool.prompts[i])
    if not q:
        return None
    frames = ["{q}"] + phrases("echo_frame", split)
    return str(rng.choice(frames)).format(q=q)


def _pooled(name: str) -> Callable[[int, Pool, np.random.Generator, str], str | None]:
    def make(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
        return str(rng.choice(phrases(name, split)))
    return make


def _generic(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    options = phrases("generic", split)
    picks = rng.choice(len(options), size=int(rng.integers(1, 4)), replace=False)
    return " ".join(options[j] for j in picks)


def _contrast_phrase(kind: str) -> Callable[[int, Pool, np.random.Generator, str], str | None]:
    def make(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
        return str(rng.choice(TRAIN[kind] if split == "train" else HELD_OUT[kind]))
    return make


def _offtopic(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    j = (i + 1 + int(rng.integers(len(pool.answers) - 1))) % len(pool.answers)
    return pool.answers[j]


def _neighbour(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    return pool.answers[int(pool.neighbours[i])]


def _truncation(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    words = pool.answers[i].split()
    if len(words) < 12:
        return None
    return " ".join(words[:max(3, int(len(words) * float(rng.uniform(0.15, 0.4))))])


def negate(text: str) -> str:
    """Each sentence's first auxiliary verb negated, or its first negation dropped."""
    out = []
    for s in sentences(text):
        for pattern, repl in _NEGATE:
            t = pattern.sub(repl, s, count=1)
            if t != s:
                s = t
                break
        out.append(s)
    return " ".join(out)


def _negation(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    out = negate(pool.answers[i])
    return out if out != " ".join(sentences(pool.answers[i])) else None


def _entity_swap(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    answer = pool.answers[i]
    out = _NUMBER.sub(lambda m: str(int(float(m.group().replace(",", ""))) * int(rng.integers(2, 9))
                                    + int(rng.integers(1, 30))), answer)
    names = set(_NAME.findall(answer))
    if names:
        other = [n for n in _NAME.findall(pool.answers[int(pool.neighbours[i])]) if n not in names]
        other = other or [n for n in _NAME.findall(pool.answers[(i + 1) % len(pool.answers)]) if n not in names]
        for name in sorted(names):
            if other:
                out = re.sub(rf"\b{name}\b", str(rng.choice(other)), out)
    return out if out != answer else None


def _padding(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    options = phrases("filler", split)
    n = max(3, len(sentences(pool.answers[i])))
    before = [str(rng.choice(options)) for _ in range(int(rng.integers(0, n // 2 + 1)))]
    after = [str(rng.choice(options)) for _ in range(n - len(before))]
    return " ".join(before + [pool.answers[i]] + after)


def _mixed_language(i: int, pool: Pool, rng: np.random.Generator, split: str) -> str | None:
    sents, options = sentences(pool.answers[i]), phrases("foreign", split)
    if len(sents) < 2:
        return f"{sents[0]} " + " ".join(str(rng.choice(options)) for _ in range(2)) if sents else None
    keep = int(rng.integers(1, len(sents)))  # its first sentences, the rest in another language
    return " ".join(sents[:keep] + [str(rng.choice(options)) for _ in range(len(sents) - keep)])


GENERATORS: dict[str, Callable[[int, Pool, np.random.Generator, str], str | None]] = {
    "word_shuffle": _word_shuffle, "sentence_shuffle": _sentence_shuffle, "repetition": _repetition,
    "echo": _echo, "terse": _pooled("terse"), "generic": _generic, "refusal": _pooled("refusal"),
    "nonanswer": _contrast_phrase("nonanswer"), "dismissive": _contrast_phrase("dismissive"),
    "offtopic": _offtopic, "neighbour": _neighbour, "truncation": _truncation, "negation": _negation,
    "entity_swap": _entity_swap, "padding": _padding, "mixed_language": _mixed_language,
}
assert tuple(GENERATORS) == FAMILIES


def degrade(family: str, i: int, pool: Pool, rng: np.random.Generator, split: str = "train") -> str | None:
    """A worse reply of ``family`` for ``pool``'s i-th answer, or None where the family does not apply
    (too short to cut, nothing to negate, no request to echo) or gives the answer back unchanged."""
    if family not in GENERATORS:
        raise ValueError(f"unknown degradation family {family!r}; choose from {FAMILIES}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = GENERATORS[family](i, pool, rng, split)
    return out if out is not None and out.strip() and out.strip() != pool.answers[i].strip() else None


def degradation_records(prompts: Sequence[str], answers: Sequence[str], families: Sequence[str] = FAMILIES,
                        per_answer: int = 1, split: str = "train", seed: int = 0,
                        families_per_answer: int | None = None) -> list[dict[str, Any]]:
    """Records ``{"prompt", "chosen": real answer, "rejected": worse, "source": "degrade:<family>"}``:
    ``per_answer`` variants of each family (or of ``families_per_answer`` random families) for each
    (prompt, answer)."""
    pool = Pool.build(prompts, answers)
    rng = np.random.default_rng(seed)
    out = []
    for i, (p, a) in enumerate(zip(pool.prompts, pool.answers)):
        mine = (families if families_per_answer is None or families_per_answer >= len(families)
                else [families[j] for j in sorted(rng.permutation(len(families))[:families_per_answer])])
        for family in mine:
            for _ in range(per_answer):
                worse = degrade(family, i, pool, rng, split)
                if worse is not None:
                    out.append({"prompt": p, "chosen": a, "rejected": worse, "source": f"degrade:{family}"})
    return out


def benign_degradation_records(records: Sequence[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    """:func:`degradation_records` over the real answers of benign ``records`` (harmful sources refused)."""
    answers = real_answers(records)
    return degradation_records([p for p, _, _ in answers], [a for _, a, _ in answers], **kw)


# word noise, the kinds taking turns over the answers (not a family: FAMILIES): the three word edits, so that
# the copies are as often longer as shorter than their answer and length tells nothing apart
NOISE_KINDS = ("replaced", "deleted", "inserted")
NOISE_RATE = 0.3  # the chance of an edit at each of an answer's words
NOISE_MIN_WORDS = 6  # shorter answers get no noisy copy: noise on two words makes a terse reply
NOISE_WORD = re.compile(r"\S+")


def noisy_copy(answer: str, kind: str, vocab: Sequence[str], rng: np.random.Generator,
               rate: float = NOISE_RATE) -> str:
    """``answer`` with each word (``NOISE_WORD``), with probability ``rate``, replaced by a word drawn from
    ``vocab`` (``kind="replaced"``), deleted with the space before it (``"deleted"``; the first word stays
    if all would go), or followed by a word drawn from ``vocab`` after one space (``"inserted"``). Its spacing
    and line breaks are otherwise kept, so layout tells nothing apart."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown word-noise kind {kind!r}; choose from {NOISE_KINDS}")
    matches = list(NOISE_WORD.finditer(answer))
    if not matches:
        return answer
    seps = [answer[(matches[i - 1].end() if i else 0):m.start()] for i, m in enumerate(matches)]
    words = [m.group() for m in matches]

    def drawn() -> str:
        return vocab[int(rng.integers(len(vocab)))]

    keep = [True] * len(words)
    if kind == "replaced":
        words = [drawn() if rng.random() < rate else w for w in words]
    elif kind == "inserted":
        words = [f"{w} {drawn()}" if rng.random() < rate else w for w in words]
    else:
        keep = [rng.random() >= rate for _ in words]
        keep[0] = keep[0] or not any(keep)
    kept = [i for i, k in enumerate(keep) if k]
    return "".join((seps[0] if j == 0 else seps[i]) + words[i] for j, i in enumerate(kept)) + \
        answer[matches[-1].end():]


def noise_records(prompts: Sequence[str], answers: Sequence[str], n: int | None = None, seed: int = 0,
                  kinds: Sequence[str] = NOISE_KINDS) -> list[dict[str, Any]]:
    """Records ``{"prompt", "chosen": real answer, "rejected": noisy copy, "source": "noise:<kind>"}`` for the
    first ``n`` (None: all) answers of at least ``NOISE_MIN_WORDS`` words, the ``kinds`` (of ``NOISE_KINDS``)
    taking turns by the answer's position (a copy the noise left unchanged is dropped); replacement and
    inserted words come from all of ``answers``."""
    if not kinds or set(kinds) - set(NOISE_KINDS):
        raise ValueError(f"word-noise kinds must be some of {NOISE_KINDS}, got {list(kinds)}")
    rng = np.random.default_rng(seed)
    tokens = [NOISE_WORD.findall(a) for a in answers]  # each answer's words
    vocab = [w for words in tokens for w in words]
    out = []
    for k, (prompt, answer, words) in enumerate(list(zip(prompts, answers, tokens))[:n]):
        if len(words) < NOISE_MIN_WORDS:
            continue
        kind = kinds[k % len(kinds)]
        bad = noisy_copy(answer, kind, vocab, rng)
        if bad != answer:  # the noise missed every word: no comparison
            out.append({"prompt": prompt, "chosen": answer, "rejected": bad, "source": f"noise:{kind}"})
    return out


def benign_noise_records(records: Sequence[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    """:func:`noise_records` over the real answers of benign ``records`` (harmful sources refused)."""
    answers = real_answers(records)
    return noise_records([p for p, _, _ in answers], [a for _, a, _ in answers], **kw)
