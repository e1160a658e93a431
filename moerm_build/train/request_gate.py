"""Fit the request gate (``moerm_lite.request_gate``) after training, like the read-outs: which experts it
switches and the classifier of the request that switches them.

- the *red-team experts*: the routed experts that take at least as large a share of HH-RLHF harmless's
  training inputs as of any other source's with a request (both replies of each population comparison; the
  share of a source's inputs that route to the expert);
- the *classifier*: a logistic regression of the request's unit embedding and a bias, HH-RLHF harmless's
  training prompts (+1) against every other population training prompt (-1), L2 ``L2``; the gate is on
  where its logit is above 0, and wherever there is no request (persona statements).

Measured in docs/decisions/bad-replies.md ("A gate that reads the request"): on the noise + empty-replies
encoder, the everyday answer first for 61 of 66 requests instead of 50, persona, attribute and DSP users,
HH-RLHF and the sanity suite held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from moerm_lite.personalize import penalized_logistic
from moerm_lite.request_gate import RequestGate, gate_inputs

from moerm_build import data
from moerm_build.model import MoEHead

log = logging.getLogger("moerm_build")
RED_TEAM = "hh_harmless"  # the source whose requests the gated experts serve
SOURCES = ("hh_harmless", "hh_helpful", "finegrained_qa", "topical_chat")  # the real sources with a request
L2 = 1.0


def prompt_embeddings(embed: Callable[[Sequence[str], str], np.ndarray],
                      prompts: Sequence[str]) -> np.ndarray:
    """(N, H) embeddings of requests (rows of empty ones unused: the gate is on without a request)."""
    return embed([p if p.strip() else " " for p in prompts], "prompt")


def red_team_experts(shares: dict[str, np.ndarray], n_routed: int) -> list[int]:
    """The routed experts (of the first ``n_routed``) whose share of ``RED_TEAM``'s inputs (``shares``: per
    source, (K,) the share of its inputs routed to each expert) is above 0 and at least every other
    source's."""
    S = np.stack([shares[s] for s in SOURCES])  # (sources, K)
    top = np.argmax(S, axis=0)  # (K,)
    red = (top == SOURCES.index(RED_TEAM)) & (shares[RED_TEAM] > 0)  # (K,)
    return [int(k) for k in np.flatnonzero(red) if k < n_routed]


def fit_request_gate(head: MoEHead, records: Sequence[data.Record],
                     embed: Callable[[Sequence[str], str], np.ndarray],
                     features: Callable[[list[tuple[str, str]]], np.ndarray]) -> dict[str, Any] | None:
    """The request gate of a trained ``head`` from its training ``records`` (``embed``: texts' embeddings by
    role; ``features``: pair features), as stored in a checkpoint (``RequestGate.to_dict`` and what it was
    fitted on); None where the records hold no ``RED_TEAM`` request or no expert serves them."""
    pop = [r for r in records if r.get("user_id") is None and str(r.get("prompt", "")).strip()]
    if not any(r["source"] == RED_TEAM for r in pop):
        return None
    shares = {}
    for src in SOURCES:
        pairs = [(r["prompt"], r[side]) for r in pop if r["source"] == src for side in ("chosen", "rejected")]
        if not pairs:
            shares[src] = np.zeros(head.args.n_experts)
            continue
        with torch.no_grad():
            g = head(torch.from_numpy(features(pairs)))["gating_output"].numpy()  # (2N, K)
        shares[src] = (g > 0).mean(0)  # (K,)
    experts = red_team_experts(shares, head.args.n_experts - head.args.n_shared)
    if not experts:
        return None
    red = np.where([r["source"] == RED_TEAM for r in pop], 1.0, -1.0)  # (N,) +1: a red-team request
    X = gate_inputs(prompt_embeddings(embed, [r["prompt"] for r in pop]))  # (N, H + 1)
    v = penalized_logistic(red[:, None] * X, np.zeros(len(pop)), L2)  # (H + 1,) as evaluate's logistic_fit
    gate = RequestGate(tuple(experts), tuple(float(x) for x in v))
    on = X @ v > 0  # (N,)
    log.info("request gate: experts %s; on for %.0f%% of red-team and %.0f%% of other training requests",
             experts, 100 * on[red > 0].mean(), 100 * on[red < 0].mean())
    return {**gate.to_dict(), "source": RED_TEAM, "l2": L2, "requests": {"red_team": int((red > 0).sum()),
                                                                         "other": int((red < 0).sum())}}
