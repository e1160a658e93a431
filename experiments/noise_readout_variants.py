"""Which kinds of word noise should the model's helpfulness read-out learn from? The model's own family table.

    python experiments/noise_readout_variants.py [--run runs/ship]   # ~1 minute on 2 CPU cores, cached

Feeds docs/decisions/bad-replies.md. The trained experts of a build run (``ckpt.pt``) are kept and its
helpfulness read-out is refitted (torch, fp32; ``moerm_build.train.readout``) on the run's read-out records
without the source ``noise``, plus the word noise of each mix of ``moerm_build.data.degrade.NOISE_KINDS``
(``noise_records`` over the benign real answers, as the build loads the source), and once more with all three
kinds but the text statistics' weights held where the fit without noise put them (only the embeddings' weights
learn from the noise). Each refit is scored as
``python -m moerm_build robustness --run`` scores its read-out column: the held-out answers' degradations of
every family (test phrasings); then the same families made from the everyday requests' short answers (the
fixed set of tests/test_shipped.py), the everyday requests against terse, generic, dismissive and refusal
replies (pairs won, and the share of requests whose answer beats all of them), and HH-RLHF helpful's test
split. All evaluation only; no family is in any mix, so every row is held out from the noise. Last, where the
short answers' echo moves: the read-out's term ``(h_chosen - h_echo) . u`` averaged over those pairs, per
block of the features and per text statistic, without noise and with all three kinds. Needs the export
extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moerm_lite.features import check_layout, feature_blocks

from moerm_build import data
from moerm_build.data.degrade import FAMILIES, NOISE_KINDS, benign_noise_records, degradation_records
from moerm_build.evaluate.metrics import pair_accuracy
from moerm_build.evaluate.robustness import (answer_first, everyday_records, families, family_out_records,
                                             load_everyday)
from moerm_build.train.readout import fit_for_head, readout_margin
from moerm_build.train.train import BENIGN, readout_refit, real_train_records

MIXES = ((), ("replaced", "deleted"), ("replaced",), ("deleted",), ("inserted",), ("replaced", "inserted"),
         ("deleted", "inserted"), ("replaced", "deleted", "inserted"))


def echo_terms(Sc: np.ndarray, Sr: np.ndarray, fam_short: np.ndarray,
               weights: dict[tuple[str, ...], np.ndarray], layout: str) -> None:
    """Print the mean read-out term (chosen minus echo) of the short answers' echo pairs (features (S, F) of
    the chosen and the rejected replies) per feature block and per text statistic of ``layout``, without
    noise and with every kind."""
    d = (Sc - Sr)[fam_short == "echo"].mean(0)  # (F,)
    u0, u1 = weights[()], weights[MIXES[-1]]  # (F,) each
    stats = check_layout(layout)
    blocks = feature_blocks((len(d) - len(stats)) // 2, layout)
    edges = np.cumsum([0, *blocks.values()])
    start = int(edges[list(blocks).index("statistics")])
    print("short answers' echo: mean read-out term, chosen minus echo: no noise -> all three kinds")
    for name, a, z in zip(blocks, edges[:-1], edges[1:]):
        print(f"  block {name:18}{d[a:z] @ u0[a:z]:+8.3f} -> {d[a:z] @ u1[a:z]:+8.3f}")
    for i, name in enumerate(stats):
        j = start + i
        if abs(d[j]) > 1e-6:
            print(f"  statistic {name:18}{d[j] * u0[j]:+8.3f} -> {d[j] * u1[j]:+8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/ship", help="a build run (its ckpt.pt)")
    run = Path(ap.parse_args().run)
    rf = readout_refit(run, drop_sources=["noise"])
    cfg, base, recs, Hc, Hr, off = rf.cfg, rf.base, rf.records, rf.chosen, rf.rejected, rf.offset
    test = family_out_records()[2]
    fam_te = families(test)  # (M,)
    hh = data.REAL_LOADERS["hh_helpful"](Path(cfg.data_dir), split="test")
    rows_ev = load_everyday()
    short = degradation_records([r["prompt"] for r in rows_ev], [r["answer"] for r in rows_ev], split="test",
                                seed=0)
    fam_short = families(short)  # (S,)
    everyday = everyday_records()
    prompts = np.array([r["prompt"] for r in everyday])  # (E,)
    scored = {"families": rf.inputs(test), "short": rf.inputs(short), "everyday": rf.inputs(everyday),
              "hh_helpful": rf.inputs(hh)}
    benign = real_train_records(BENIGN, Path(cfg.data_dir))
    bound = float(base.args.reward_bound)
    print(f"{run}: the trained experts kept, the read-out refitted on its {len(recs)} records without noise, "
          "plus each mix of word noise; held-out pairs won (%)")
    rows: dict[str, dict[str, float]] = {}
    weights: dict[tuple[str, ...], np.ndarray] = {}

    def score(u: np.ndarray) -> dict[str, float]:
        margins = {name: readout_margin(*inputs, u, bound) for name, inputs in scored.items()}  # name -> (M,)
        row = {f: 100 * pair_accuracy(margins["families"][fam_te == f])
               for f in FAMILIES if (fam_te == f).any()}
        row.update({f"short {f}": 100 * pair_accuracy(margins["short"][fam_short == f])
                    for f in FAMILIES if (fam_short == f).any()})
        row.update(everyday=100 * pair_accuracy(margins["everyday"]),
                   everyday_first=100 * answer_first(margins["everyday"] > 0, prompts),
                   hh_helpful=100 * pair_accuracy(margins["hh_helpful"]))
        return row

    for mix in MIXES:
        noise = benign_noise_records(benign, seed=cfg.seed, kinds=mix) if mix else []
        Nc, Nr, noff = rf.inputs(noise) if noise else (Hc[:0], Hr[:0], off[:0])
        fit_inputs = np.vstack([Hc, Nc]), np.vstack([Hr, Nr]), np.concatenate([off, noff])  # (N + n, F) ...
        weights[mix] = fit_for_head(base, *fit_inputs, cfg.readout_l2)  # (F,)
        rows[" + ".join(mix) or "no noise"] = score(weights[mix])
        print(f"  {' + '.join(mix) or 'no noise'}: {len(noise)} noise records", flush=True)
        if set(mix) == set(NOISE_KINDS):
            every_kind = fit_inputs
    # all three kinds, the text statistics (the last columns: feature_blocks) held where the fit without noise
    # put them
    held = np.zeros(len(weights[()]), bool)  # (F,)
    held[-len(check_layout(cfg.feature_layout)):] = True
    rows["all, statistics held"] = score(fit_for_head(base, *every_kind, cfg.readout_l2, held, weights[()]))
    names = list(rows)
    print(f"{'':24}" + "".join(f"{n[:16]:>17}" for n in names))
    for key in rows[names[0]]:
        print(f"{key:24}" + "".join(f"{rows[n][key]:17.1f}" for n in names))
    echo_terms(*scored["short"][:2], fam_short, weights, cfg.feature_layout)
    for label, prefix in (("lowest family", ""), ("lowest short", "short ")):
        keys = {prefix + f for f in FAMILIES}
        lowest = [min(v for k, v in rows[n].items() if k in keys) for n in names]
        print(f"{label:24}" + "".join(f"{v:17.1f}" for v in lowest))


if __name__ == "__main__":
    main()

