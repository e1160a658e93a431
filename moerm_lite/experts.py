"""Expert cards without an LLM: what each expert does, read off a reference corpus.

A model folder may ship ``reference.jsonl`` (named by ``"reference"`` in ``config.json`` and
checked by the manifest): a few hundred ``{"prompt", "response", "source"}`` rows, some with
known attribute labels ``"labels": {"<attribute>": +1 | -1}`` (e.g. a persona axis and the
statement's stance). For each expert a card gives

- ``routing_share``: the share of reference rows routed to it, overall and per ``source``;
- ``highest`` / ``lowest``: the routed rows it rewards most and least;
- ``correlations``: the attributes whose labels best track its gated reward ``pi_k * r_k``
  (Pearson over all rows; a row without the attribute counts 0; sources count as 0/1
  attributes ``source:<name>``), strongest first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .folder import ModelFolderError, read_manifest, resolve_inside, verify_files
from .head import expert_features


def read_reference(folder: Path, rel: str) -> list[dict[str, Any]]:
    """The reference rows of a model folder, checked against its manifest."""
    verify_files(folder, read_manifest(folder), [rel])
    rows = []
    for n, line in enumerate(resolve_inside(folder, rel).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("response"), str):
                raise ModelFolderError(f"{rel}:{n}: each row needs a string 'response'")
            rows.append(row)
    return rows


def read_cards(folder: Path, rel: str) -> list[dict[str, Any]]:
    """Expert cards stored in a model folder at export (``expert_cards.json``), checked by the manifest."""
    verify_files(folder, read_manifest(folder), [rel])
    cards = json.loads(resolve_inside(folder, rel).read_text(encoding="utf-8"))
    if not isinstance(cards, list) or not all(isinstance(c, dict) and "highest" in c for c in cards):
        raise ModelFolderError(f"{folder / rel} is not a list of expert cards")
    return cards


def trim_card(card: dict[str, Any], n_texts: int, n_attributes: int | None) -> dict[str, Any]:
    """A stored card cut to ``n_texts`` texts each way and the ``n_attributes`` strongest correlations."""
    corr = sorted(card["correlations"].items(), key=lambda kv: -abs(kv[1]))
    if n_attributes is not None:
        corr = [kv for kv in corr[:n_attributes] if kv[1] != 0]
    return {**card, "highest": card["highest"][:n_texts], "lowest": card["lowest"][:n_texts],
            "correlations": dict(corr)}


def attribute_matrix(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Attribute names and values (N, A): labelled attributes, then ``source:<name>`` indicators."""
    labels = sorted({a for r in rows for a in r.get("labels", {})})
    sources = sorted({str(r.get("source", "")) for r in rows if r.get("source")})
    names = labels + [f"source:{s}" for s in sources]
    Y = np.zeros((len(rows), len(names)))  # (N, A)
    col = {a: i for i, a in enumerate(names)}
    for i, r in enumerate(rows):
        for a, v in r.get("labels", {}).items():
            Y[i, col[a]] = float(v)
        if r.get("source"):
            Y[i, col[f"source:{r['source']}"]] = 1.0
    return names, Y


def correlations(F: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson correlations of the columns of F (N, K) with those of Y (N, A), (K, A); 0 if constant."""
    Fc, Yc = F - F.mean(0), Y - Y.mean(0)
    denom = np.sqrt(np.outer((Fc**2).sum(0), (Yc**2).sum(0)))  # (K, A)
    return np.divide(Fc.T @ Yc, denom, out=np.zeros_like(denom), where=denom > 1e-12)


def expert_cards(rows: list[dict[str, Any]], gates: np.ndarray, rewards: np.ndarray, expert_names: list[str], *,
                 n_texts: int = 3, n_attributes: int | None = 3, max_chars: int = 120) -> list[dict[str, Any]]:
    """One card per expert (see the module docstring), in expert order, from the reference rows and
    the model's dense outputs on them: ``gates`` and ``rewards`` (N, K) each.

    ``n_attributes=None`` keeps every attribute's correlation (for a heatmap).
    """
    if not rows:
        raise ValueError("the reference corpus is empty")
    if gates.shape != rewards.shape or gates.shape != (len(rows), len(expert_names)):
        raise ValueError(f"gates {gates.shape} and rewards {rewards.shape} must be ({len(rows)}, {len(expert_names)})")
    routed = gates > 0  # (N, K)
    names, Y = attribute_matrix(rows)
    C = correlations(expert_features(gates, rewards), Y)  # (K, A)
    src = np.array([str(r.get("source", "")) for r in rows])

    def short(i: int) -> str:
        text = " ".join(rows[i]["response"].split())
        return text if len(text) <= max_chars else text[:max_chars - 1] + "…"

    cards = []
    for k, name in enumerate(expert_names):
        on = np.flatnonzero(routed[:, k])
        by_r = on[np.argsort(-rewards[on, k], kind="stable")]
        top_a = np.argsort(-np.abs(C[k]), kind="stable")[:n_attributes]  # all if None
        cards.append({
            "expert": k, "name": name,
            "routing_share": float(routed[:, k].mean()), "n_routed": len(on),
            "routing_share_by_source": {str(s): float(routed[src == s, k].mean()) for s in sorted(set(src)) if s},
            "highest": [short(i) for i in by_r[:n_texts]],
            "lowest": [short(i) for i in by_r[::-1][:max(0, min(n_texts, len(by_r) - n_texts))]],  # disjoint
            "correlations": {str(names[a]): float(C[k, a]) for a in top_a
                             if n_attributes is None or C[k, a] != 0},
        })
    return cards
