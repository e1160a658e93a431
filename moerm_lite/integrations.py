"""Reward functions for RL trainers, built without importing them.

- :func:`trl_reward_func`: TRL's ``GRPOTrainer(reward_funcs=[...])`` calling convention,
  ``f(prompts, completions, **kwargs) -> list[float]``, for plain-text and conversational
  (message-list) datasets. A ``user_id`` dataset column picks each row's profile.
- :func:`openrlhf_reward_func`: OpenRLHF's ``--remote_rm_url reward_func.py`` convention,
  ``reward_func(queries, prompts, labels) -> {"rewards", "scores", "extra_logs"}``, where each
  query is its prompt followed by the response.

Both score every sample and never fail a batch for one of them: an empty completion (GRPO samples
one whenever EOS comes first) is scored like any text (the core API's rule), and a text over the
model's ``max_chars`` is scored on its first ``max_chars`` characters (a prompt on its last), which
changes nothing the backbone sees: it reads ``max_length`` tokens anyway.

With ``population_guard=p`` each group of completions for one prompt (GRPO's group; and one user) gets
rewards in the order ``RewardModel.rank(..., population_guard=p)`` gives them (``moerm_lite.guard``): a
profile cannot reward a completion the population is surer than ``p`` is worse than the group's best above
the others.

Neither imports TRL, OpenRLHF or torch. OpenRLHF expects tensors: if torch is already imported
in the process (it is, inside OpenRLHF) the values are ``torch.Tensor``, else numpy arrays.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from .guard import check_guard, guarded_rewards
from .head import combine, row_terms
from .model import BATCH_SIZE, RewardModel, User
from .personalize import UserProfile


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or the contents of a TRL message list joined by blank lines
    (a message whose ``content`` is missing or ``None``, such as a tool call, is empty)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        return "\n\n".join(str(m.get("content") or "") for m in completion)
    raise TypeError(f"a completion must be a string or a list of chat messages, "
                    f"got {type(completion).__name__}")


def _clip(model: RewardModel, prompt: Any, response: str) -> tuple[Any, str]:
    """A pair within ``max_chars``: a prompt keeps its end, a response its start (as truncation does)."""
    n = model.config.max_chars
    if isinstance(prompt, str) and len(prompt) > n:
        prompt = prompt[-n:]
    return prompt, response[:n]


def guarded_group_rewards(model: RewardModel, pairs: Sequence[tuple[Any, str]],
                          terms: Sequence[tuple[np.ndarray, np.ndarray | None]], groups: Sequence[Hashable],
                          guard: float, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Rewards (B,) of pairs, row i scored for its user's ``terms[i]`` (``RewardModel.user_terms``), ordered
    within each group of rows (``groups[i]``) as a ranking with ``population_guard=guard`` orders them
    (``moerm_lite.guard.guarded_rewards``); the population's scores come from the same backbone pass."""
    residuals = any(v is not None for _, v in terms)
    out = model.expert_outputs(pairs, batch_size=batch_size, with_features=residuals)
    contributions, residual = row_terms(out["gating_output"], out["rewards"], out.get("features"),
                                        list(terms))  # (B, K), (B,)
    population = combine(out["gating_output"], out["rewards"], model.user_terms(None)[0])  # (B,)
    return guarded_rewards(contributions.sum(1) + residual, population, groups, guard)  # (B,)


def prompt_key(prompt: Any) -> Hashable:
    """A prompt (a string or a list of chat messages) as a key that is equal for equal prompts."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


def trl_reward_func(model: RewardModel, user: User = None, *,
                    profiles: Mapping[str, UserProfile] | None = None,
                    batch_size: int = BATCH_SIZE,
                    population_guard: float | None = None) -> Callable[..., list[float]]:
    """A TRL GRPO reward function scoring with ``model`` for one ``user`` (``None``: population).

    With ``profiles``, rows whose ``user_id`` (a dataset column TRL passes as a keyword) is in
    it are scored with that profile; other rows with ``user``. An unknown id raises ``KeyError``.
    Every sample gets a float (see the module docstring for empty and over-long completions).
    ``population_guard`` (a probability in (0.5, 1), such as 0.9): the completions of one prompt for one
    user are rewarded in the order of ``rank(..., population_guard=...)`` (:func:`guarded_group_rewards`).
    """
    if population_guard is not None:
        check_guard(population_guard)

    def moerm_lite_reward(prompts: Sequence[Any], completions: Sequence[Any],
                          **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = [_clip(model, p, completion_text(c)) for p, c in zip(prompts, completions)]
        user_ids = kwargs.get("user_id")
        if profiles is None or user_ids is None:
            if population_guard is None:
                return model.score_pairs(pairs, user=user, batch_size=batch_size).tolist()
            ids: list[Any] = [None] * len(pairs)  # each row's user_id (None: ``user``)
            terms = [model.user_terms(user)] * len(pairs)
        else:
            unknown = sorted({str(u) for u in user_ids if u is not None and u not in profiles})
            if unknown:
                raise KeyError(f"no profile for user_id {unknown[0]!r}; known: {sorted(profiles)[:5]}")
            ids = list(user_ids)
            terms = [model.user_terms(profiles[u] if u is not None else user) for u in ids]
        if population_guard is None:
            contributions, residual = model.score_rows(pairs, terms, batch_size=batch_size)
            return (contributions.sum(1) + residual).tolist()  # (B,)
        groups = [(prompt_key(p), u) for p, u in zip(prompts, ids)]
        return guarded_group_rewards(model, pairs, terms, groups, population_guard, batch_size).tolist()

    return moerm_lite_reward


def openrlhf_reward_func(model: RewardModel, user: User = None, *, batch_size: int = BATCH_SIZE,
                         population_guard: float | None = None) -> Callable[..., dict[str, Any]]:
    """An OpenRLHF ``reward_func(queries, prompts, labels)``; ``scores`` = sigmoid(reward) in (0, 1).
    ``population_guard``: the queries of one prompt are rewarded in the order of ``rank(...,
    population_guard=...)`` (:func:`guarded_group_rewards`)."""
    if population_guard is not None:
        check_guard(population_guard)

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Any = None) -> dict[str, Any]:
        if len(queries) != len(prompts):
            raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")
        pairs = []
        for i, (q, p) in enumerate(zip(queries, prompts)):
            if not (isinstance(q, str) and isinstance(p, str)) or not q.startswith(p):
                raise ValueError(f"query {i} does not start with its prompt; "
                                 "OpenRLHF queries are prompt + response")
            pairs.append(_clip(model, p, q[len(p):]))
        if population_guard is None:
            rewards = model.score_pairs(pairs, user=user, batch_size=batch_size).astype(np.float32)  # (B,)
        else:
            terms = [model.user_terms(user)] * len(pairs)
            rewards = guarded_group_rewards(model, pairs, terms, list(prompts), population_guard,
                                            batch_size).astype(np.float32)  # (B,)
        scores = (0.5 * (1.0 + np.tanh(0.5 * rewards))).astype(np.float32)  # (B,) sigmoid, no overflow
        torch = sys.modules.get("torch")
        as_out = (lambda a: torch.from_numpy(a)) if torch is not None else (lambda a: a)
        return {"rewards": as_out(rewards), "scores": as_out(scores),
                "extra_logs": {"moerm_lite_reward": as_out(rewards.copy())}}

    return reward_func
