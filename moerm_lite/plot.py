"""Plots of a model and its users (needs the ``plot`` extra: ``pip install "moerm-lite[plot]"``).

- :func:`plot_expert_attributes`: expert x attribute correlation heatmap (reference corpus);
- :func:`plot_routing_by_source`: share of each source's reference rows routed to each expert;
- :func:`plot_user_shift`: a user's weights next to ``w0`` (the post-adaptation shift).

Each takes what it draws (expert cards or a profile) and writes a PNG to ``path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .personalize import UserProfile


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('plots need matplotlib: pip install "moerm-lite[plot]"') from e
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _used(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    used = [c for c in cards if c["routing_share"] > 0]
    return used or cards


def plot_expert_attributes(cards: list[dict[str, Any]], path: str | Path) -> Path:
    """Heatmap of expert (rows, routed experts only) x attribute (columns) Pearson correlations.

    ``cards`` from ``describe_experts(n_attributes=None)``, so each holds every attribute.
    """
    plt = _pyplot()
    used = _used(cards)
    names = sorted({a for c in used for a in c["correlations"]})
    C = np.array([[c["correlations"].get(a, 0.0) for a in names] for c in used])  # (E, A)
    fig, ax = plt.subplots(figsize=(0.35 * len(names) + 3, 0.3 * len(used) + 2))
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(used)), [f"{c['expert']}: {c['name']}" for c in used], fontsize=7)
    ax.set_title("expert reward vs attribute (Pearson r, reference corpus)")
    fig.colorbar(im, ax=ax, shrink=0.6)
    return _save(fig, path)


def plot_routing_by_source(cards: list[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: for each routed expert, the share of each source's rows routed to it."""
    plt = _pyplot()
    used = _used(cards)
    sources = sorted({s for c in used for s in c["routing_share_by_source"]})
    x = np.arange(len(used))
    width = 0.8 / max(1, len(sources))
    fig, ax = plt.subplots(figsize=(0.4 * len(used) + 3, 4))
    for j, s in enumerate(sources):
        ax.bar(x + j * width, [c["routing_share_by_source"].get(s, 0.0) for c in used], width, label=s)
    ax.set_xticks(x + 0.4 - width / 2, [f"{c['expert']}: {c['name']}" for c in used], fontsize=7,
                  rotation=70, ha="right")
    ax.set_xlabel("expert")
    ax.set_ylabel("share of the source's rows routed here")
    ax.legend(fontsize=7)
    ax.set_title("routing share per source (reference corpus)")
    return _save(fig, path)


def plot_user_shift(profile: UserProfile, expert_names: list[str], path: str | Path, top: int = 12) -> Path:
    """The ``top`` experts whose weight moved most from ``w0``: w0 and the user's weights, with ±1 sd."""
    plt = _pyplot()
    w, w0 = profile.weights_, profile.w0_
    sd = np.sqrt(np.diag(profile.covariance_))  # (K,)
    order = np.argsort(-np.abs(w - w0), kind="stable")[:top]
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1.5))
    ax.barh(y - 0.2, w0[order], 0.4, label="w0 (population)", color="0.7")
    ax.barh(y + 0.2, w[order], 0.4, xerr=sd[order], label=f"user {profile.user_id or ''}".strip(),
            color="tab:blue", error_kw={"elinewidth": 0.8})
    ax.set_yticks(y, [f"{k}: {expert_names[k]}" for k in order], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("expert weight")
    ax.set_title(f"post-adaptation shift ({profile.n_comparisons_} comparisons)")
    ax.legend(fontsize=7)
    return _save(fig, path)
