"""Which of two builds is better, on every held-out table at once? Two report.json files side by side.

    python experiments/compare_reports.py runs/ship/report.json runs/v2/report.json [--names old new]

Reads what ``moerm_build.release.pipeline`` writes (int8 runtime numbers, as the card shows them): the
degradation families on held-out answers (and the read-out family-out check where measured), everyday
requests, the hacking search, the sanity suite, human-labelled pairs next to the frozen probe, persona,
attribute and DSP users at N = 5 / 10 / 20 / 50, the active-question gain and int8 parity. Prints one
markdown table; a row reads "n/a" where a report lacks it. Measures nothing itself: seconds. Feeds the
build-against-build tables of docs/decisions/ (e.g. features.md, "Word-trigram statistics").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SHOTS = ("5", "10", "20", "50")


def pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def curve(d: Any) -> str:
    return "n/a" if not isinstance(d, dict) else " / ".join(pct(d.get(n)) for n in SHOTS)


def get(rep: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(rep, dict) or key not in rep:
            return None
        rep = rep[key]
    return rep


def rows(rep: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    fams = get(rep, "robustness", "families", "families") or {}
    fo = get(rep, "robustness", "readout_family_out", "families") or {}
    for fam, row in fams.items():
        out[f"family {fam}: model (read-out family-out)"] = (
            f"{pct(row.get('model'))} ({pct(get(fo, fam, 'readout_family_out'))})")
    out["family min"] = pct(get(rep, "robustness", "families", "min"))
    every = get(rep, "robustness", "everyday") or {}
    out["everyday: wins / answer first"] = f"{pct(every.get('wins'))} / {pct(every.get('answer_first'))}"
    out["hacking: share hacked (mean gain)"] = (f"{pct(get(rep, 'robustness', 'hacking', 'hacked'))} "
                                               f"({get(rep, 'robustness', 'hacking', 'mean_gain') or 0:.2f})")
    out["sanity min"] = pct(get(rep, "sanity", "min"))
    for name in ("hh_helpful", "hh_harmless", "finegrained_qa"):
        out[f"{name}: model / probe"] = (f"{pct(get(rep, 'population', name, 'model'))} / "
                                         f"{pct(get(rep, 'population', name, 'frozen_probe'))}")
    out["webgpt second half: model / probe"] = (
        f"{pct(get(rep, 'population', 'webgpt', 'model_second_half'))} / "
        f"{pct(get(rep, 'population', 'webgpt', 'frozen_probe_second_half'))}")
    out["persona N=5/10/20/50"] = curve(get(rep, "persona"))
    out["1 attribute"] = curve(get(rep, "attribute_users", "single"))
    out["2-3 attributes"] = curve(get(rep, "attribute_users", "multi"))
    for key, label in (("model", "DSP weights"), ("model_auto", "DSP auto"), ("frozen_probe", "DSP probe")):
        out[label] = curve(get(rep, "dsp", key))
    gain = get(rep, "active", "gain_at_10")
    out["active gain at N=10 (points)"] = "n/a" if gain is None else f"{100 * gain:+.1f}"
    out["int8 parity (decisions)"] = pct(get(rep, "parity", "decision_agreement"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs=2, type=Path)
    ap.add_argument("--names", nargs=2, default=None)
    args = ap.parse_args()
    names = args.names or [str(p.parent) for p in args.reports]
    a, b = (rows(json.loads(p.read_text())) for p in args.reports)
    print(f"| | {names[0]} | {names[1]} |\n|---|---|---|")
    for key in dict.fromkeys([*a, *b]):
        print(f"| {key} | {a.get(key, 'n/a')} | {b.get(key, 'n/a')} |")


if __name__ == "__main__":
    main()
