"""The ``moerm-lite`` command: score, rank, explain, fit, next, describe, experts, plot, info. JSONL in, JSONL
out."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from .catalog import Catalog
from .features import BLOCKS
from .guard import check_guard
from .model import BATCH_SIZE, RewardModel
from .personalize import AUTO, EVIDENCE, RECOMMENDED, UserProfile
from .sessions import ENGINES

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


class InputError(ValueError):
    """Bad input, named by its line: ``line 500 of pairs.jsonl: ...``."""


class RowsSkipped(Exception):
    """The command finished but left out bad rows (``--skip-bad``): exit code 3."""


def read_jsonl(path: str, *, keep_bad: bool = False) -> list[tuple[int, Any]]:
    """``(line number, record)`` of a JSONL file (``-`` for stdin); blank lines skipped. A bad line
    raises :class:`InputError` naming it, or with ``keep_bad`` is returned as that error in its place."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    rows: list[tuple[int, Any]] = []
    with f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise InputError(f"{_where(n, path)}: each line must be a JSON object")
                except (ValueError, RecursionError) as e:
                    err = e if isinstance(e, InputError) else InputError(
                        f"{_where(n, path)}: not valid JSON ({getattr(e, 'msg', str(e)[:80])})")
                    if not keep_bad:
                        raise err from None
                    row = err
                rows.append((n, row))
    return rows


def _where(n: int, path: str) -> str:
    return f"line {n} of {'stdin' if path == '-' else path}"


def _field(row: dict[str, Any], key: str, n: int, path: str) -> Any:
    if key not in row:
        raise InputError(f"{_where(n, path)}: no {key!r} field")
    return row[key]


def _per_line(n: int, path: str, fn: Any, *a: Any, **kw: Any) -> Any:
    """``fn(*a, **kw)``, with a bad-input error re-raised naming the input line."""
    try:
        return fn(*a, **kw)
    except (ValueError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{_where(n, path)}: {e}") from e


def _one_line(text: str, width: int = 100) -> str:
    """A reply on one table row: whitespace collapsed, cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and abs(x) < 1e-9:
        return 0.0  # no 5.99e-37 float noise, no -0.0
    return x


def _emit(rows: Iterator[dict[str, Any]], out: IO[str]) -> None:
    for row in rows:
        out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")


def _load(args: argparse.Namespace) -> tuple[RewardModel, UserProfile | None]:
    model = RewardModel.load(args.model, threads=args.threads, precision=args.precision, engine=args.engine,
                             int8_compute=args.int8_compute)
    user = UserProfile.load(args.user) if getattr(args, "user", None) else None
    return model, user


def cmd_info(args: argparse.Namespace, out: IO[str]) -> None:
    m, _ = _load(args)
    cfg = m.config
    info = {"model_id": cfg.model_id, "folder": str(m.folder), "precision": m.precision,
            "precisions": sorted(cfg.graphs), "n_experts": m.n_experts, "experts_per_input": m.experts_per_input,
            "n_shared": cfg.n_shared,
            "max_length": cfg.max_length, "default_prior_strength": cfg.default_prior_strength,
            "recommended_residual_strength": cfg.recommended_residual_strength,
            "recommended_residual_prior": cfg.recommended_residual_prior,
            "model_hash": m.model_hash, "threads": m.threads, "engine": m.engine,
            "int8_compute": m.int8_compute,
            "expert_names": m.expert_names}
    out.write(json.dumps(info, indent=1) + "\n")


class Rows:
    """The records of one input file, processed all-or-nothing (default) or skipping bad ones.

    ``each(fn)`` applies ``fn(line, record)`` to every record; a bad record (``ValueError`` /
    ``TypeError``) stops the command before anything is written, naming its input line, unless
    ``--skip-bad``: then it is reported on stderr, left out, and the command exits with 3.
    """

    def __init__(self, path: str, skip_bad: bool) -> None:
        self.path, self.skip_bad, self.skipped = path, skip_bad, 0
        self.rows = read_jsonl(path, keep_bad=True)

    def _report(self, err: InputError) -> None:
        self.skipped += 1
        sys.stderr.write(f"skipped {err}\n")

    def finish(self) -> None:
        """Raise :class:`RowsSkipped` (exit 3) if any row was skipped."""
        if self.skipped:
            raise RowsSkipped(f"{self.skipped} bad row(s) of {self.path} skipped (listed above)")

    def each(self, fn: Any) -> list[tuple[dict[str, Any], Any]]:
        done = []
        for n, r in self.rows:
            try:
                if isinstance(r, InputError):
                    raise r
                done.append((r, _per_line(n, self.path, fn, n, r)))
            except InputError as e:
                if not self.skip_bad:
                    raise
                self._report(e)
        return done


def _without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The input record's own fields (``id`` and the like) minus the bulky ones the output replaces."""
    return {k: v for k, v in row.items() if k not in keys}


def cmd_score(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = Rows(args.input, args.skip_bad)
    checked = rows.each(lambda n, r: m.check_pair((r.get("prompt", ""), _field(r, "response", n, args.input))))
    scores = m.score_pairs([pair for _, pair in checked], user=user, batch_size=args.batch_size,
                           progress=Progress(len(checked), "score"))
    _emit(({**r, "score": float(s)} for (r, _), s in zip(checked, scores)), out)
    rows.finish()


def cmd_encode(args: argparse.Namespace, out: IO[str]) -> None:
    m, _ = _load(args)
    rows = Rows(args.input, args.skip_bad)
    checked = rows.each(lambda n, r: (str(r.get("id", n)), m.check_pair(
        (r.get("prompt", ""), _field(r, "response", n, args.input)))))
    ids = [i for _, (i, _) in checked]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{args.input}: ids repeat (e.g. {next(i for i in ids if ids.count(i) > 1)!r}); "
                         "give each row a distinct 'id' or none (the line number is used)")
    catalog = m.encode_catalog([pair for _, (_, pair) in checked], ids, batch_size=args.batch_size,
                               progress=Progress(len(checked), "encode"), with_features=args.features)
    catalog.save(args.out)
    sys.stderr.write(f"encoded {len(catalog)} candidates -> {args.out}\n")
    rows.finish()


def guard_probability(text: str) -> float:
    """``--population-guard``: a probability in (0.5, 1) (``moerm_lite.guard.check_guard``)."""
    try:
        return check_guard(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_rank_catalog(args: argparse.Namespace, out: IO[str]) -> None:
    """Rank an encoded catalog for a profile (or the population): no model, no backbone."""
    catalog = Catalog.load(args.catalog)
    user = UserProfile.load(args.user) if args.user else None
    ranking = catalog.rank(user, top_k=args.top_k)
    if args.format == "table":
        places = len(str(len(ranking)))
        for place, item in enumerate(ranking, 1):
            out.write(f"  {place:>{places}}. {item['score']:+8.3f}  {item['id']}\n")
    else:
        _emit(({"id": item["id"], "score": item["score"]} for item in ranking), out)


def cmd_rank(args: argparse.Namespace, out: IO[str]) -> None:
    if args.catalog:
        if args.input is not None:
            raise ValueError(f"rank --catalog ranks the encoded catalog {args.catalog}; it reads no -i "
                             f"({args.input}): drop -i, or drop --catalog to rank the requests in {args.input}")
        if args.population_guard is not None:
            raise ValueError("rank --catalog ranks one catalog of many prompts' replies; --population-guard "
                             "compares the candidates of one prompt: drop one of them")
        return cmd_rank_catalog(args, out)
    m, user = _load(args)
    rows = Rows("-" if args.input is None else args.input, args.skip_bad)
    done = rows.each(lambda n, r: m.rank(r.get("prompt", ""), _field(r, "responses", n, args.input),
                                         user=user, top_k=args.top_k, population_guard=args.population_guard))
    for r, ranking in done:
        if args.format == "table":
            who = f"user {user.user_id!r}" if user is not None and user.user_id else (
                "user profile" if user is not None else "population weights w0")
            out.write(f"\nprompt: {r.get('prompt', '')!r}   ({who})\n")
            places = len(str(len(ranking)))
            for place, item in enumerate(ranking, 1):
                mark = "  (guarded)" if item.get("guarded") else ""
                out.write(f"  {place:>{places}}. {item['score']:+8.3f}  {_one_line(item['text'])}{mark}\n")
        else:
            _emit(iter([{**_without(r, "responses"), "prompt": r.get("prompt", ""), "ranking": ranking}]), out)
    rows.finish()


def cmd_explain(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = Rows(args.input, args.skip_bad)
    done = rows.each(lambda n, r: m.explain(r.get("prompt", ""), _field(r, "response", n, args.input), user=user))
    for r, e in done:
        if args.format == "table":
            out.write(f"\nprompt: {_one_line(str(r.get('prompt', '')))!r}\nresponse: {_one_line(r['response'])!r}\n"
                      f"score {e['score']:+.3f}{'  (truncated)' if e['truncated'] else ''}\n")
            residual_label = "residual over pair features (this user)"
            width = max([len("expert"), len(residual_label) - 24] + [len(n) for n in e["experts"]])
            out.write(f"  {'expert':<{width}} {'gate':>6} {'reward':>7} {'weight':>7} {'contribution':>12}\n")
            for k in np.argsort(-np.abs(e["contributions"]), kind="stable"):
                if e["gating_output"][k] > 0:
                    out.write(f"  {e['experts'][k]:<{width}} {e['gating_output'][k]:6.3f} {e['rewards'][k]:+7.3f} "
                              f"{e['weights'][k]:+7.3f} {e['contributions'][k] + 0.0:+12.3f}\n")
            if e["residual"]:
                out.write(f"  {residual_label:<{width + 24}} {e['residual']:+12.3f}\n")
        else:
            _emit(iter([{**r, **e}]), out)
    rows.finish()


def cmd_fit(args: argparse.Namespace, out: IO[str]) -> None:
    dest = args.out or args.update
    if not dest:
        raise ValueError("say where to write the profile: -o FILE (or --update FILE)")
    m, _ = _load(args)
    rows = Rows(args.comparisons, args.skip_bad)
    comps = [r for r, _ in rows.each(lambda n, r: m.check_comparison(r, "the comparison"))]
    if not comps:
        raise ValueError(f"no comparisons in {args.comparisons}: nothing to fit (a profile needs at least one "
                         '{"prompt", "chosen", "rejected"} line)')
    if args.update:  # read, update and write under a lock: concurrent updates all land
        residual = UserProfile.load(args.update).residual_strength is not None  # fixed when it was fitted
        phi, X = m.comparison_terms(comps, with_pair_features=residual)
        profile = UserProfile.update_saved(args.update, phi, m.model_hash, X)
    else:
        profile = m.fit_user(comps, user_id=args.user_id, prior_strength=args.prior_strength,
                             residual_strength=args.residual_strength, residual_prior=args.residual_prior)
        profile.save(dest)
    shift = profile.weights_ - m.w0
    top = np.argsort(-np.abs(shift))[:5]
    sys.stderr.write(f"fitted {profile.n_comparisons_} comparisons ({len(comps)} new) -> {dest}\n")
    for i in top:
        sys.stderr.write(f"  {m.expert_names[i]:<40} w0 {m.w0[i]:+.3f} -> {profile.weights_[i]:+.3f}\n")
    rows.finish()


def cmd_next(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    rows = Rows(args.input, args.skip_bad)
    done = rows.each(lambda n, r: m.next_comparison(r.get("prompt", ""), _field(r, "candidates", n, args.input),
                                                    user=user))
    _emit(({**_without(r, "candidates"), "prompt": r.get("prompt", ""), **q} for r, q in done), out)
    rows.finish()


def residual_strength(text: str) -> float | str | None:
    """``--residual-strength``: a number, ``auto``, ``evidence``, ``recommended`` or ``none``."""
    if text in (AUTO, EVIDENCE, RECOMMENDED):
        return text
    if text == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, auto, evidence, recommended or none, got {text!r}"
                                         ) from None


def residual_prior(text: str) -> dict[str, float] | str | None:
    """``--residual-prior``: ``recommended``, ``none`` or a scale per block, ``relevance=0.1,statistics=3``."""
    if text == RECOMMENDED:
        return text
    if text == "none":
        return None
    try:
        return {name.strip(): float(value) for name, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected recommended, none or BLOCK=SCALE[,BLOCK=SCALE...] (blocks: "
                                         f"{', '.join(BLOCKS)}), got {text!r}") from None


def cmd_describe(args: argparse.Namespace, out: IO[str]) -> None:
    m, user = _load(args)
    if not isinstance(user, UserProfile):
        raise ValueError("describe needs --user PROFILE.json")
    d = m.describe_user(user, top=args.top)
    if args.format == "table":
        out.write(d["text"] + "\n")
        width = max([len(g["name"]) for label in ("favours", "disfavours") for g in d[label]], default=0)
        for label in ("favours", "disfavours"):
            for g in d[label]:
                out.write(f"  {label:<10} {g['name']:<{width}} shift {g['shift']:+7.3f}  z {g['z']:+6.2f}  "
                          f"{g['certainty']} ({100 * g['p_sign']:.0f}%)\n")
    else:
        _emit(iter([d]), out)


def cmd_experts(args: argparse.Namespace, out: IO[str]) -> None:
    m, _ = _load(args)
    cards = m.describe_experts(n_texts=args.n_texts)
    if args.format == "table":
        width = max([len(c["name"]) for c in cards], default=0)
        places = len(str(max([c["expert"] for c in cards], default=0)))
        for c in cards:
            corr = ", ".join(f"{a} {v:+.2f}" for a, v in c["correlations"].items())
            out.write(f"{c['expert']:>{places}} {c['name']:<{width}} routed {100 * c['routing_share']:5.1f}%  {corr}\n")
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

    def common(sp: argparse.ArgumentParser, user: bool = True, rows: bool = True) -> None:
        sp.add_argument("--model", default=None, help="model folder (default: the shipped model)")
        if rows:
            sp.add_argument("--skip-bad", action="store_true",
                            help="leave out bad input rows (listed on stderr, exit code 3) instead of "
                                 "stopping at the first one with nothing written")
        sp.add_argument("--threads", type=int, default=None, help="intra-op threads of the engine")
        sp.add_argument("--precision", default="int8", help="graphs to run (default int8; `info` lists them)")
        sp.add_argument("--engine", choices=ENGINES, default="onnxruntime",
                        help='what runs the backbone (openvino: pip install "moerm-lite[openvino]")')
        sp.add_argument("--int8-compute", action="store_true",
                        help="onnxruntime: multiply the backbone's 8-bit weights in int8 (less memory; faster "
                             "on some CPUs with VNNI, slower on others; scores move slightly; docs/api.md)")
        if user:
            sp.add_argument("--user", default=None, help="user profile JSON written by `fit`")

    sp = sub.add_parser("info", help="describe a model folder")
    common(sp, user=False, rows=False)
    sp.set_defaults(fn=cmd_info)
    sp = sub.add_parser("score", help='score JSONL records {"prompt", "response"}')
    sp.add_argument("-i", "--input", default="-", help="JSONL file (default: - , stdin)")
    sp.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="most texts per backbone call")
    common(sp)
    sp.set_defaults(fn=cmd_score)
    sp = sub.add_parser("rank", help='rank JSONL records {"prompt", "responses": [...]}')
    sp.add_argument("-i", "--input", default=None, help="JSONL file (default: - , stdin)")
    sp.add_argument("--top-k", type=int, default=None, help="keep the best k responses")
    sp.add_argument("--format", choices=["jsonl", "table"], default="jsonl")
    sp.add_argument("--catalog", default=None, metavar="NPZ",
                    help="rank a catalog written by `encode` instead (no -i; rows {id, score})")
    sp.add_argument("--population-guard", type=guard_probability, default=None, metavar="P",
                    help="a reply the population prefers the best one to with probability above P (such as "
                         "0.9) comes after the others, whatever the user's score, marked guarded")
    common(sp)
    sp.set_defaults(fn=cmd_rank)
    sp = sub.add_parser("encode", help='encode a catalog of JSONL records {"id", "prompt", "response"} once, '
                                       "to rank it for any user with `rank --catalog`")
    sp.add_argument("-i", "--input", default="-", help="JSONL file (default: - , stdin)")
    sp.add_argument("-o", "--out", required=True, help="catalog file to write (.npz)")
    sp.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="most texts per backbone call")
    sp.add_argument("--features", action=argparse.BooleanOptionalAction, default=True,
                    help="store each candidate's pair features (~3 KB each; default): profiles with a residual "
                         "(`fit`'s default) need them; a catalog --no-features ranks only profiles fitted with "
                         "--residual-strength none and plain weights")
    common(sp, user=False)
    sp.set_defaults(fn=cmd_encode)
    sp = sub.add_parser("explain", help='per-expert breakdown of JSONL records {"prompt", "response"}')
    sp.add_argument("-i", "--input", default="-", help="JSONL file (default: - , stdin)")
    sp.add_argument("--format", choices=["jsonl", "table"], default="jsonl")
    common(sp)
    sp.set_defaults(fn=cmd_explain)
    sp = sub.add_parser("fit", help='fit a user profile from {"prompt", "chosen", "rejected"} JSONL')
    sp.add_argument("comparisons", help="JSONL file of comparisons, - for stdin")
    sp.add_argument("-o", "--out", default=None, help="where to write the profile JSON")
    sp.add_argument("--update", default=None, metavar="PROFILE",
                    help="fold the comparisons into this profile (same weights as refitting on all)")
    sp.add_argument("--user-id", default=None)
    sp.add_argument("--prior-strength", type=float, default=None, help="lambda (default: the model's)")
    sp.add_argument("--residual-strength", type=residual_strength, default=RECOMMENDED,
                    metavar="RHO|evidence|auto|recommended|none",
                    help="the residual over pair features, for tastes the experts miss: recommended (default: "
                         "the model's, 30 for the shipped one, moves with many comparisons), a strength, evidence "
                         "(chosen per user by the Laplace evidence of its comparisons), auto (chosen per user by "
                         "leave-one-out) or none (expert weights alone)")
    sp.add_argument("--residual-prior", type=residual_prior, default=RECOMMENDED,
                    metavar="recommended|none|BLOCK=SCALE,...",
                    help="how freely the residual may use each block of the pair features (reply, relevance, "
                         "statistics; 1 where not named): recommended (default: the model's; every block 1 for "
                         "the shipped one), none (every block 1) or e.g. relevance=0.1,statistics=3")
    common(sp, user=False)
    sp.set_defaults(fn=cmd_fit)
    sp = sub.add_parser("next", help='which pair to ask a user about: {"prompt", "candidates": [...]} JSONL')
    sp.add_argument("-i", "--input", default="-", help="JSONL file (default: - , stdin)")
    common(sp)
    sp.set_defaults(fn=cmd_next)
    sp = sub.add_parser("describe", help="what a user profile favours and disfavours, in words")
    sp.add_argument("--top", type=int, default=3, help="experts listed each way")
    sp.add_argument("--format", choices=["jsonl", "table"], default="table")
    common(sp, rows=False)
    sp.set_defaults(fn=cmd_describe)
    sp = sub.add_parser("experts", help="expert cards from the model's reference corpus")
    sp.add_argument("--n-texts", type=int, default=3, help="highest/lowest texts per expert")
    sp.add_argument("--format", choices=["jsonl", "table"], default="table")
    common(sp, user=False, rows=False)
    sp.set_defaults(fn=cmd_experts)
    sp = sub.add_parser("plot", help="PNG plots (needs the plot extra)")
    sp.add_argument("kind", choices=["experts", "routing", "user"],
                    help="experts: expert x attribute heatmap; routing: routing share per source; "
                         "user: a profile's weights against w0")
    sp.add_argument("-o", "--out", required=True, help="PNG file to write")
    common(sp, rows=False)
    sp.set_defaults(fn=cmd_plot)
    return p


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """Entry point; returns the exit code: 0, 2 with a one-line message on bad input (nothing is
    written), 3 when ``--skip-bad`` left out bad rows (the rest is written)."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args, out)
        out.flush()
    except BrokenPipeError:  # `moerm-lite score ... | head`: the reader left; that is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, out.fileno())
        except (OSError, ValueError):  # not a real file descriptor (tests pass a StringIO)
            pass
        return 0
    except RowsSkipped as e:
        sys.stderr.write(f"moerm-lite {args.command}: {e}\n")
        return 3
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
