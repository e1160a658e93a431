"""A population guard for personalized rankings: a user's taste orders the replies the population rates
as acceptable, and cannot lift a reply the population is sure is worse.

A profile is fitted on comparisons between replies a person could prefer to each other; what it says about a
one-word, dismissive or off-topic reply is extrapolation, and measured on simulated users it often ranks such
a reply first (docs/decisions/residual.md). The population's scores are logits of its own preference: a
margin ``m`` between two replies says the population prefers the first with probability ``sigmoid(m)``. With a
guard ``p`` (``RewardModel.rank(..., population_guard=p)``), a reply is *guarded out* when the population
prefers the best candidate to it with probability above ``p``; the others come first, in the user's order,
then the guarded-out ones, in the population's order. :func:`guarded_rewards` gives an RL trainer's group of
completions for one prompt rewards in that order (``moerm_lite.integrations``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np


def check_guard(guard: float) -> float:
    """``guard`` as a float in (0.5, 1), else ``ValueError`` naming it."""
    if isinstance(guard, bool) or not isinstance(guard, (int, float, np.floating)) \
            or not 0.5 < float(guard) < 1.0:
        raise ValueError(f"population_guard must be a probability in (0.5, 1), such as 0.9, got {guard!r}")
    return float(guard)


def guard_margin(guard: float) -> float:
    """The population margin (a logit) above which the population is surer than ``guard``."""
    p = check_guard(guard)
    return math.log(p / (1.0 - p))


def guarded_out(population: np.ndarray, guard: float) -> np.ndarray:
    """Which candidates (n,) bool the population is surer than ``guard`` to rank below its best one, from
    their population scores (n,)."""
    population = np.asarray(population, np.float64)  # (n,)
    if population.ndim != 1:
        raise ValueError(f"population scores must be (n,), got {population.shape}")
    margin = guard_margin(guard)
    if not len(population):
        return np.zeros(0, dtype=bool)
    return population < population.max() - margin  # (n,)


def guarded_order(scores: np.ndarray, population: np.ndarray, guard: float) -> np.ndarray:
    """Indices (n,) of candidates, best first: those not :func:`guarded_out` by ``scores`` (n,) (the
    user's); after them the rest, by ``population`` (n,). Ties keep input order."""
    scores = np.asarray(scores, np.float64)  # (n,)
    population = np.asarray(population, np.float64)  # (n,)
    if scores.shape != population.shape:
        raise ValueError(f"guarded_order: scores {scores.shape} and population {population.shape} differ")
    out = guarded_out(population, guard)  # (n,)
    first, rest = np.flatnonzero(~out), np.flatnonzero(out)
    return np.concatenate([first[np.argsort(-scores[first], kind="stable")],
                           rest[np.argsort(-population[rest], kind="stable")]])


def guarded_margins(user: np.ndarray, population: np.ndarray, guard: float) -> np.ndarray:
    """Pairs decided as a guarded ranking of two decides them: the user's margins (N,) where the population's
    margins (N,) of the same pairs are within ``guard_margin(guard)`` either way, the population's elsewhere.
    The first reply of pair i comes first where the result is positive."""
    user = np.asarray(user, np.float64)  # (N,)
    population = np.asarray(population, np.float64)  # (N,)
    return np.where(np.abs(population) > guard_margin(guard), population, user)  # (N,)


def guarded_rewards(scores: np.ndarray, population: np.ndarray, groups: Sequence[Hashable], guard: float
                    ) -> np.ndarray:
    """Rewards (N,) whose order within each group of rows (``groups[i]``: row i's group, such as its prompt)
    is :func:`guarded_order`'s: a row not guarded out keeps its score (N,) (the user's); a guarded-out row
    gets the lowest such score of its group minus how far its population score (N,) falls below the group's
    best beyond ``guard_margin(guard)``, so it ranks below every other row of the group, in the population's
    order. Rows of different groups do not affect each other."""
    scores = np.asarray(scores, np.float64)  # (N,)
    population = np.asarray(population, np.float64)  # (N,)
    if scores.shape != population.shape or scores.ndim != 1 or len(groups) != len(scores):
        raise ValueError(f"guarded_rewards: scores {scores.shape}, population {population.shape} and "
                         f"{len(groups)} group labels must be (N,) alike")
    margin = guard_margin(guard)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    rewards = scores.copy()  # (N,)
    for rows in members.values():
        idx = np.array(rows)  # (n,)
        out = guarded_out(population[idx], guard)  # (n,); never the group's best
        if out.any():
            floor = scores[idx[~out]].min()
            excess = population[idx].max() - margin - population[idx[out]]  # (m,) > 0
            rewards[idx[out]] = floor - excess
    return rewards  # (N,)
