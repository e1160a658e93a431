"""The reference corpus shipped in a model folder (``reference.jsonl``) for expert cards.

A few hundred rows, none from training splits: persona statements of the 16 benchmark axes
(held-out statements; label ``<axis>`` = +1 for a statement a person with that persona would
make, -1 otherwise) and held-out replies from the human-labelled sets (label
``human_preferred`` = +1 for the chosen reply, -1 for the rejected one; and each text attribute).
Never an evaluation-only set (relabeled HH, DSP, WebGPT). Excerpts keep their sources' licences (see the model card).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import ATTRIBUTES, attribute_matrix


def reference_corpus(data_dir: Path = data.DATA_DIR, per_axis: int = 12, per_source: int = 40,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "response", "source", "labels"}``: ``per_axis`` statements per persona axis
    (half each stance) and ``per_source`` replies (half chosen) per human-labelled set, test splits only;
    the replies also carry their text attributes (``moerm_build.data.attributes``, standardised on the training pool)."""
    from moerm_build.evaluate.real_eval import train_scaler

    scaler = train_scaler()
    rng = np.random.default_rng(seed)
    st = data.load_persona(data_dir)
    test = data.statement_split(st, "test")
    rows: list[dict[str, Any]] = []
    for a, axis in enumerate(st.axes):
        for y in (1, -1):
            pool = test[(st.axis[test] == a) & (st.y[test] == y)]
            for i in rng.permutation(pool)[:per_axis // 2]:
                rows.append({"prompt": "", "response": st.text[i], "source": "persona", "labels": {axis: y}})
    real_start = len(rows)
    for load in data.REAL_LOADERS.values():
        recs, seen, taken = load(data_dir, split="test"), set(), 0
        for j in rng.permutation(len(recs)):
            r = recs[j]
            if taken == per_source // 2 or r["chosen"] in seen or r["rejected"] in seen:
                continue  # every reply once: one text, one label
            seen |= {r["chosen"], r["rejected"]}
            taken += 1
            for key, y in (("chosen", 1), ("rejected", -1)):
                rows.append({"prompt": r["prompt"], "response": r[key], "source": r["source"],
                             "labels": {"human_preferred": y}})
    z = scaler(attribute_matrix([r["response"] for r in rows[real_start:]]))  # (R, A) standardised
    for r, zr in zip(rows[real_start:], z):
        r["labels"].update({a: round(float(v), 3) for a, v in zip(ATTRIBUTES, zr)})
    return rows


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
