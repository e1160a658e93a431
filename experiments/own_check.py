"""Does `python -m moerm_build own` keep the base's sense of quality on a real taste? One DSP domain user.

    python experiments/own_check.py                  # ~4 minutes on 2 CPU cores; --domain business, ...

Feeds docs/build.md, "Your own preferences, one command".

Writes the comparisons of one DSP domain user (the reply written for the domain against each of the other
four replies, every instruction; evaluation-only data, so the folder is for measuring, never shipping) to a
temporary file, runs ``moerm_build.release.own.own_on_base`` on the shipped model and prints its report: held-out
accuracy of the base and the new folder, the everyday requests and the sanity suite for both.
Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from moerm_build import data
from moerm_build.release.own import own_on_base

DOMAINS = ("academy", "business", "entertainment", "literature")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domain", default="academy", choices=DOMAINS)
    args = ap.parse_args()
    rows = [{"prompt": r["query"], "chosen": r["responses"][args.domain], "rejected": r["responses"][other]}
            for r in data.load_dsp() for other in (*DOMAINS, "normal") if other != args.domain]
    with tempfile.TemporaryDirectory() as tmp:
        prefs = Path(tmp) / f"{args.domain}.jsonl"
        prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = own_on_base(prefs, Path(tmp) / "mine")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
