"""The ``moerm-lite`` command: score, rank, explain, fit, next, experts, plot, info. JSONL in, JSONL out."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from .model import RewardModel
from .personalize import UserProfile

PROGRESS_MIN_ROWS = 200


class Progress:
    """A one-line progress bar on stderr, shown only for long inputs on a terminal-like stream."""

    def __init__(self, total: int, label: str, stream: IO[str] = sys.stderr) -> None:
        self.total, self.label, self.stream, self.done = total, label, stream, 0
        self.on = total >= PROGRESS_MIN_ROWS
        self.t0 = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.on:
            frac = self.done / self.total
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} {rate:.0f}/s")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a JSONL file (``-`` for stdin); blank lines skipped, bad lines named."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    rows = []
    with f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: each line must be a JSON object")
                rows.append(row)
    return rows


def _field(row: dict[str, Any], key: str, n: int) -> Any:
    if key not in row:
        raise ValueError(f"record {n} has no {key!r} field")
    return row[key]


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


def _emit(rows: Iterator[dict[str, Any]], out: IO[str]) -> None:
    for row in rows:
        out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")


def _load(args: argparse.Namespace) -> tuple[RewardModel, UserProfile | None]:
    model = RewardModel.load(args.model, threads=args.threads, precision=args.precision)
    user = UserProfile.load(args.user) if getattr(args, "user", None) else None
    return model, user


def cmd_info(args: argparse.Namespace, out: IO[str]) -> None:
    m, _ = _load(args)
    cfg = m.config
    info = {"model_id": cfg.model_id, "folder": str(m.folder), "precision": m.precision,
            "precisions": sorted(cfg.graphs), "n_experts": m.n_experts, "top_k": m.top_k,
            "max_length": cfg.max_length, "default_prior_strength": cfg.default_prior_strength,
            "model_hash": m.model_hash, "threads": m.threads, "expert_names": m.expert_names}
    out.write(json.dumps(info, indent=1) + "\n")


def cmd_score(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = read_jsonl(args.input)
    pairs = [(r.get("prompt", ""), _field(r, "response", n)) for n, r in enumerate(rows, 1)]
    scores = m.score_pairs(pairs, user=user, batch_size=args.batch_size,
                           progress=Progress(len(pairs), "score"))
    _emit(({**r, "score": float(s)} for r, s in zip(rows, scores)), out)


def cmd_rank(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = read_jsonl(args.input)
    for n, r in enumerate(rows, 1):
        ranking = m.rank(r.get("prompt", ""), _field(r, "responses", n), user=user, top_k=args.top_k)
        if args.format == "table":
            who = f"user {user.user_id!r}" if user is not None and user.user_id else (
                "user profile" if user is not None else "population weights w0")
            out.write(f"\nprompt: {r.get('prompt', '')!r}   ({who})\n")
            for place, item in enumerate(ranking, 1):
                out.write(f"  {place}. {item['score']:+8.3f}  {item['text']}\n")
        else:
            _emit(iter([{"prompt": r.get("prompt", ""), "ranking": ranking}]), out)


def cmd_explain(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = read_jsonl(args.input)
    for n, r in enumerate(rows, 1):
        _emit(iter([m.explain(r.get("prompt", ""), _field(r, "response", n), user=user)]), out)


def cmd_fit(args: argparse.Namespace, out: IO[str]) -> None:
    m, _ = _load(args)
    comps = read_jsonl(args.comparisons)
    if args.update:
        profile = UserProfile.load(args.update).update(comps, m)
    else:
        profile = m.fit_user(comps, user_id=args.user_id, prior_strength=args.prior_strength)
    dest = args.out or args.update
    if not dest:
        raise ValueError("say where to write the profile: -o FILE (or --update FILE)")
    profile.save(dest)
    shift = profile.weights_ - m.w0
    top = np.argsort(-np.abs(shift))[:5]
    sys.stderr.write(f"fitted {profile.n_comparisons_} comparisons ({len(comps)} new) -> {dest}\n")
    for i in top:
        sys.stderr.write(f"  {m.expert_names[i]:<40} w0 {m.w0[i]:+.3f} -> {profile.weights_[i]:+.3f}\n")


def cmd_next(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = read_jsonl(args.input)
    for n, r in enumerate(rows, 1):
        q = m.next_comparison(r.get("prompt", ""), _field(r, "candidates", n), user=user)
        _emit(iter([{"prompt": r.get("prompt", ""), **q}]), out)


def cmd_experts(args: argparse.Namespace, out: IO[str]) -> None:
    m, _ = _load(args)
    cards = m.describe_experts(n_texts=args.n_texts)
    if args.format == "table":
        for c in cards:
            corr = ", ".join(f"{a} {v:+.2f}" for a, v in c["correlations"].items())
            out.write(f"{c['expert']:>3} {c['name']:<32} routed {100 * c['routing_share']:5.1f}%  {corr}\n")
            for label in ("highest", "lowest"):
                for t in c[label]:
                    out.write(f"      {label[0]}: {t}\n")
    else:
        _emit(iter(cards), out)


def cmd_plot(args: argparse.Namespace, out: IO[str]) -> None:
    from . import plot  # matplotlib only here

    m, user = _load(args)
    if args.kind == "user":
        if user is None:
            raise ValueError("plot user needs --user PROFILE.json")
        m.check_profile(user)
        path = plot.plot_user_shift(user, m.expert_names, args.out)
    elif args.kind == "experts":
        path = plot.plot_expert_attributes(m.describe_experts(n_attributes=None), args.out)
    else:
        path = plot.plot_routing_by_source(m.describe_experts(), args.out)
    sys.stderr.write(f"wrote {path}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moerm-lite", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, user: bool = True) -> None:
        sp.add_argument("--model", default=None, help="model folder (default: the shipped model)")
        sp.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
        sp.add_argument("--precision", default="int8", help="graphs to run: int8 (default) or fp32")
        if user:
            sp.add_argument("--user", default=None, help="user profile JSON written by `fit`")

    sp = sub.add_parser("info", help="describe a model folder")
    common(sp, user=False)
    sp.set_defaults(fn=cmd_info)
    sp = sub.add_parser("score", help='score JSONL records {"prompt", "response"}')
    sp.add_argument("-i", "--input", default="-", help="JSONL file, - for stdin")
    sp.add_argument("--batch-size", type=int, default=32)
    common(sp)
    sp.set_defaults(fn=cmd_score)
    sp = sub.add_parser("rank", help='rank JSONL records {"prompt", "responses": [...]}')
    sp.add_argument("-i", "--input", default="-", help="JSONL file, - for stdin")
    sp.add_argument("--top-k", type=int, default=None, help="keep the best k responses")
    sp.add_argument("--format", choices=["jsonl", "table"], default="jsonl")
    common(sp)
    sp.set_defaults(fn=cmd_rank)
    sp = sub.add_parser("explain", help='per-expert breakdown of JSONL records {"prompt", "response"}')
    sp.add_argument("-i", "--input", default="-", help="JSONL file, - for stdin")
    common(sp)
    sp.set_defaults(fn=cmd_explain)
    sp = sub.add_parser("fit", help='fit a user profile from {"prompt", "chosen", "rejected"} JSONL')
    sp.add_argument("comparisons", help="JSONL file of comparisons, - for stdin")
    sp.add_argument("-o", "--out", default=None, help="where to write the profile JSON")
    sp.add_argument("--update", default=None, metavar="PROFILE",
                    help="fold the comparisons into this profile (same weights as refitting on all)")
    sp.add_argument("--user-id", default=None)
    sp.add_argument("--prior-strength", type=float, default=None, help="lambda (default: the model's)")
    common(sp, user=False)
    sp.set_defaults(fn=cmd_fit)
    sp = sub.add_parser("next", help='which pair to ask a user about: {"prompt", "candidates": [...]} JSONL')
    sp.add_argument("-i", "--input", default="-", help="JSONL file, - for stdin")
    common(sp)
    sp.set_defaults(fn=cmd_next)
    sp = sub.add_parser("experts", help="expert cards from the model's reference corpus")
    sp.add_argument("--n-texts", type=int, default=3, help="highest/lowest texts per expert")
    sp.add_argument("--format", choices=["jsonl", "table"], default="table")
    common(sp, user=False)
    sp.set_defaults(fn=cmd_experts)
    sp = sub.add_parser("plot", help="PNG plots (needs the plot extra)")
    sp.add_argument("kind", choices=["experts", "routing", "user"],
                    help="experts: expert x attribute heatmap; routing: routing share per source; "
                         "user: a profile's weights against w0")
    sp.add_argument("-o", "--out", required=True, help="PNG file to write")
    common(sp)
    sp.set_defaults(fn=cmd_plot)
    return p


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """Entry point; returns the exit code (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args, out)
    except (ValueError, TypeError, KeyError, OSError, FloatingPointError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"moerm-lite {args.command}: error: {msg}\n")
        return 2
    return 0


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
