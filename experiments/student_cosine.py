"""How close is a distilled student encoder to the full one? Cosine of their embeddings on held-out texts.

    python experiments/student_cosine.py runs/l4/all-MiniLM-L4-distilled           # ~1 minute on 2 CPU cores
    python experiments/student_cosine.py STUDENT --teacher runs/enc/all-MiniLM-L6-v2-quality

Feeds docs/decisions/speed.md ("A backbone of three layers", "... and of four"). The first 150 prompts of
the HH-RLHF helpful and of the harmless test splits and their chosen replies, each embedded (mean pooling,
fp32, at most 256 tokens, a prompt keeping its end) by the teacher (default: the packaged all-MiniLM-L6-v2)
and by the student; prints the mean cosine and its 5th percentile per role. The pair features read unit
embeddings only (``moerm_lite.features``), so this is how much of what the head reads the student keeps.
Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.model import Backbone
from moerm_build.train.embed import default_backbone_path, embed_texts, text_tokenizer


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, H) embeddings: (N,)."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("student", help="a local Hugging Face encoder folder (finetune's output)")
    ap.add_argument("--teacher", default=None,
                    help="the full encoder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--n", type=int, default=150, help="records of each HH-RLHF test split")
    args = ap.parse_args()
    teacher = args.teacher or str(default_backbone_path())
    recs = data.load_hh_helpful(split="test")[:args.n] + data.load_hh_harmless(split="test")[:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        tok = text_tokenizer(teacher, 256, Path(tmp))
        full, small = Backbone(teacher).eval(), Backbone(args.student).eval()
        for role, key in (("prompt", "prompt"), ("response", "chosen")):
            texts = [r[key] for r in recs]
            c = cosines(embed_texts(full, tok, texts, role), embed_texts(small, tok, texts, role))  # (N,)
            print(f"{role:<9} cosine to the teacher: mean {c.mean():.3f}, "
                  f"5th percentile {np.percentile(c, 5):.3f} ({len(c)} held-out texts)")


if __name__ == "__main__":
    main()
