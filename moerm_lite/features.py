"""Pair features: what the expert head sees of a (prompt, response), from two text embeddings.

Prompt and response are embedded separately by the backbone (mean pooling), then combined::

    r_hat = r / |r|,  p_hat = p / |p|     (0 for an empty prompt)            (B, H) each
    x     = [ r_hat,  p_hat * r_hat,  (v2: repeated_trigrams, copied_trigrams),  cos(p, r),  has_prompt,
              log1p(words(response)),  log1p(words(prompt)),  log1p(lines),  list_share,  has_code,
              exclamations, questions, second_person, contractions (per word),
              mean word length, log1p(words per sentence) ]            (B, 2H + 13), v2 (B, 2H + 15)

``r_hat`` carries what the response says and how (topic, stance, tone); ``p_hat * r_hat`` and the
cosine carry relevance (all-MiniLM-L6-v2 was trained as a bi-encoder on question-answer pairs);
the surface statistics carry what a mean-pooled embedding cannot see well: length, layout and
the rates of a few style markers. Layout v2 adds two statistics of the words themselves that a mean of
token embeddings cannot see: the share of the response's word trigrams that repeat an earlier one
(a looped sentence, padding) and the share that also occur in the prompt (the question echoed back); they
sit before the v1 statistics so that those stay the last 13 columns in both layouts. ``config.json`` names
the layout a model was built with (``LAYOUTS``); new builds use ``DEFAULT_LAYOUT`` unless their
``TrainConfig.feature_layout`` says otherwise. (v2 was measured and is not shipped: the shares catch repeated and
echoed replies but are diluted by padding, which then wins more often; docs/decisions/features.md.)
The shipped model's shared (always active) experts see only the statistics, which carry over to new
prompts; its routed experts see everything.
Training (``moerm_build/``) computes the same features with this same function, so the two never drift.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

SURFACE = ("cosine", "has_prompt", "log_words", "log_prompt_words", "log_lines", "list_share", "has_code",
           "exclamations", "questions", "second_person", "contractions", "word_length", "log_sentence_words")
WORD_STATISTICS = ("repeated_trigrams", "copied_trigrams")  # v2 only, before SURFACE
BLOCKS = ("reply", "relevance", "statistics")  # a pair's features in order: r_hat, p_hat * r_hat, the rest
BlockPrior = tuple[tuple[str, int, float], ...]  # a residual prior per block, in order: (name, size, scale)
LAYOUTS = {"prompt_response_v1": SURFACE, "prompt_response_v2": WORD_STATISTICS + SURFACE}  # the columns after 2H
DEFAULT_LAYOUT = "prompt_response_v1"  # the layout new models are built with (config.json's ``features``);
#                                       v2 was measured and not shipped (docs/decisions/features.md)
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)])\s+\S")
_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_SECOND_PERSON = frozenset("you your yours yourself yourselves".split())
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")  # a lower-cased word or number, for the trigram statistics


def check_layout(layout: str) -> tuple[str, ...]:
    """The statistics' names after the 2H embedding columns of ``layout``; a ValueError names the known ones."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown pair-feature layout {layout!r}; this moerm-lite computes {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def feature_dim(hidden_size: int, layout: str = DEFAULT_LAYOUT) -> int:
    """F, the length of a pair's feature vector in ``layout``, for backbone embeddings of size H."""
    return 2 * hidden_size + len(check_layout(layout))


def feature_blocks(hidden_size: int, layout: str = DEFAULT_LAYOUT) -> dict[str, int]:
    """How many of a pair's F features each of ``BLOCKS`` holds, in their order: ``reply`` (r_hat, H),
    ``relevance`` (p_hat * r_hat, H) and ``statistics`` (the columns after 2H, the cosine among them)."""
    return {"reply": hidden_size, "relevance": hidden_size, "statistics": len(check_layout(layout))}


def block_prior(scales: Mapping[str, float], blocks: Mapping[str, int]) -> BlockPrior:
    """A prior scale per block (``{"relevance": 0.1, "statistics": 3.0}``; a block not named: 1) as the
    ``blocks`` of the pair features (``feature_blocks``) in order, ``(name, size, scale)``; a ValueError names an
    unknown block or a scale that is not a positive finite number."""
    if not isinstance(scales, Mapping) or set(scales) - set(blocks):
        raise ValueError(f"a residual prior names blocks among {tuple(blocks)}, got {scales!r}")
    out = []
    for name, size in blocks.items():
        scale = scales.get(name, 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                math.isfinite(scale) and scale > 0):
            raise ValueError(f"the residual prior's scale for {name!r} must be a positive finite number, "
                             f"got {scale!r}")
        out.append((name, int(size), float(scale)))
    return tuple(out)


def _trigrams(text: str) -> list[tuple[str, ...]]:
    words = _TOKEN.findall(text.lower())
    return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]


def word_statistics(prompt: str, response: str) -> tuple[float, float]:
    """``repeated_trigrams, copied_trigrams`` of a response: the share of its word trigrams (lower-cased)
    that repeat an earlier one (1 - distinct / all), and the share that also occur in the prompt; 0 with
    no trigram. A reply written twice has 0.5 or a little more; the question echoed back has 1."""
    tri = _trigrams(response)
    if not tri:
        return 0.0, 0.0
    prompt_tri = set(_trigrams(prompt))
    return 1.0 - len(set(tri)) / len(tri), sum(t in prompt_tri for t in tri) / len(tri)


def surface(text: str) -> tuple[float, ...]:
    """Layout and style statistics of a response (the tokenizer drops line breaks; pooling drops counts):
    ``log1p(lines), list_share, has_code``, then per word ``exclamations, questions, second_person,
    contractions``, mean word length and ``log1p(words per sentence)``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    n = max(len(lines), 1)
    items = sum(1 for ln in lines if _LIST_ITEM.match(ln))
    code = "```" in text or sum(1 for ln in lines if ln.startswith("    ")) >= 2
    words = _WORD.findall(text)
    nw = max(len(words), 1)
    second = sum(w.lower() in _SECOND_PERSON for w in words)
    contractions = sum(("'" in w or "’" in w) for w in words)
    sentences = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    return (float(np.log1p(n)), items / n, float(code), text.count("!") / nw, text.count("?") / nw,
            second / nw, contractions / nw, sum(len(w) for w in words) / nw, float(np.log1p(len(words) / sentences)))


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (B, 1)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def pair_features(prompt_emb: np.ndarray, response_emb: np.ndarray, prompts: Sequence[str],
                  responses: Sequence[str], layout: str = DEFAULT_LAYOUT) -> np.ndarray:
    """Features (B, F) float32 of B pairs in ``layout`` from their embeddings (B, H) and texts.

    A row of ``prompt_emb`` for an empty prompt is ignored (the prompt part of the features is 0).
    """
    check_layout(layout)
    B = len(responses)
    if prompt_emb.shape != response_emb.shape or len(prompts) != B or response_emb.shape[0] != B:
        raise ValueError(f"pair_features: shapes disagree: prompts {prompt_emb.shape} / {len(prompts)}, "
                         f"responses {response_emb.shape} / {B}")
    has_prompt = np.array([bool(p.strip()) for p in prompts], dtype=np.float64)  # (B,)
    r = _unit(response_emb.astype(np.float64))  # (B, H)
    p = _unit(prompt_emb.astype(np.float64)) * has_prompt[:, None]  # (B, H)
    pr = p * r  # (B, H)
    stats = np.array([surface(t) for t in responses], dtype=np.float64).reshape(B, len(SURFACE) - 4)  # (B, 9)
    words = np.log1p([len(t.split()) for t in responses])  # (B,)
    prompt_words = np.log1p([len(t.split()) for t in prompts])  # (B,)
    extra = np.column_stack([pr.sum(1), has_prompt, words, prompt_words, stats])  # (B, 13)
    if layout == "prompt_response_v1":
        return np.hstack([r, pr, extra]).astype(np.float32)  # (B, 2H + 13)
    trigram = np.array([word_statistics(p, t) for p, t in zip(prompts, responses)]).reshape(B, 2)  # (B, 2)
    return np.hstack([r, pr, trigram, extra]).astype(np.float32)  # (B, 2H + 15)
