"""Helpers shared by test modules."""

import numpy as np

from tests.tiny import WORDS


def random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs of tiny-vocabulary words; some prompts empty, lengths 1-29 words."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    return [(" ".join(rng.choice(words, rng.integers(0, 6))),
             " ".join(rng.choice(words, rng.integers(1, 30)))) for _ in range(n)]
