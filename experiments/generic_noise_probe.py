"""Can a read-out learn bad replies from corruptions that are none of the degradation families?

    python experiments/generic_noise_probe.py [--kinds replaced deleted]   # ~5 minutes on 2 CPU cores, cached

Feeds docs/decisions/bad-replies.md. The family-out probe of
``moerm_build.evaluate.robustness.family_table`` (a logistic probe on the frozen pair features, scored on the
held-out answers' degradations, test phrasings) asks what a read-out learns of a family from the *other*
families. Here it is taught *generic* corruptions instead: real answers of the licensed training mixture with
a share of their words replaced by words drawn from other answers (``replaced``), deleted at random
(``deleted``), or followed by a word drawn from other answers (``inserted``; ``--kinds``, default all three;
``moerm_build.data.degrade.noise_records``, the build's source ``noise``). None is one of the 16 families
(word order, truncation and swapped entities change or cut the answer in their own, specific ways), so every
family is held out at once. Columns: the probe on the real comparisons alone; with each kind of generic
corruption, and with all of ``--kinds``; and the family-out probe of the card (every other family), without
and with all of them. The last row: the everyday requests (evaluation only). Needs the export extra and
../shared/data.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np

from moerm_build import data
from moerm_build.data.degrade import FAMILIES, NOISE_KINDS, NOISE_RATE, noise_records
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import PROBE_L2
from moerm_build.evaluate.robustness import everyday_records, families, family_out_records
from moerm_build.train.embed import EmbeddingCache, default_backbone_path

N_ANSWERS = 1500  # real answers given a noisy copy, the kinds taking turns


def generic_records(train_deg: list[data.Record], kinds: Sequence[str] = NOISE_KINDS, seed: int = 0
                    ) -> dict[str, list[data.Record]]:
    """``{kind: [...]}``: a real answer (the training split's, those ``train_deg`` degrades) over its noisy
    copy (``moerm_build.data.degrade.noise_records``), ``N_ANSWERS`` answers, the ``kinds`` taking turns."""
    answers = list(dict.fromkeys((r["prompt"], r["chosen"]) for r in train_deg))  # (prompt, answer), in order
    recs = noise_records([p for p, _ in answers], [a for _, a in answers], n=N_ANSWERS, seed=seed, kinds=kinds)
    return {kind: [r for r in recs if r["source"] == f"noise:{kind}"] for kind in kinds}


def differences(cache: EmbeddingCache, recs: list[data.Record]) -> np.ndarray:
    """Chosen-minus-rejected pair features (N, F) of the frozen encoder."""
    pairs = sorted({(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")})
    pos = {p: i for i, p in enumerate(pairs)}
    X = cache.features(pairs).astype(np.float64)  # (P, F)
    c = np.array([pos[(r["prompt"], r["chosen"])] for r in recs])  # (N,)
    j = np.array([pos[(r["prompt"], r["rejected"])] for r in recs])  # (N,)
    return X[c] - X[j]  # (N, F)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", nargs="+", choices=NOISE_KINDS, default=list(NOISE_KINDS),
                    help="the kinds of word noise, taking turns over the answers")
    kinds = ap.parse_args().kinds
    cache = EmbeddingCache(default_backbone_path(), 256, layout="prompt_response_v1")
    real, train_deg, test_deg = family_out_records()
    generic = generic_records(train_deg, kinds)
    R, T, E, V = (differences(cache, recs) for recs in (real, train_deg, test_deg, everyday_records()))
    G = {kind: differences(cache, recs) for kind, recs in generic.items()}  # kind -> (M, F)
    every = np.vstack(list(G.values()))  # (M, F), all kinds
    fam_tr, fam_te = families(train_deg), families(test_deg)
    scale = np.sqrt((np.vstack([R, T]) ** 2).mean(0)) + 1e-6  # (F,): standardised probe inputs

    def probe(*blocks: np.ndarray) -> np.ndarray:
        Z = np.vstack(blocks) / scale  # (N, F)
        return logistic_fit(Z, np.ones(len(Z)), PROBE_L2) / scale  # (F,)

    def constant(w: np.ndarray) -> Callable[[str], np.ndarray]:
        return lambda family: w

    fixed = {"real only": probe(R), **{f"+ {kind}": probe(R, G[kind]) for kind in kinds},
             "+ all": probe(R, every)}
    columns: dict[str, Callable[[str], np.ndarray]] = {name: constant(w) for name, w in fixed.items()}
    columns["family-out"] = lambda family: probe(R, T[fam_tr != family])
    columns["family-out + all"] = lambda family: probe(R, T[fam_tr != family], every)
    print("generic corruptions: " + ", ".join(f"{len(recs)} {kind}" for kind, recs in generic.items())
          + f" (rate {NOISE_RATE}); probe accuracy (%) on held-out answers' degradations, test phrasings")
    print(f"{'family':18}" + "".join(f"{c:>19}" for c in columns))
    for f in FAMILIES:
        te = fam_te == f
        if te.any():
            row = [100 * pair_accuracy(E[te] @ column(f)) for column in columns.values()]
            print(f"{f:18}" + "".join(f"{x:19.1f}" for x in row), flush=True)
    everyday = [*fixed.values(), probe(R, T), probe(R, T, every)]  # the family-out columns: every family
    print(f"{'everyday':18}" + "".join(f"{100 * pair_accuracy(V @ w):19.1f}" for w in everyday))


if __name__ == "__main__":
    main()
