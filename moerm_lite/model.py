"""``RewardModel``: load a model folder, score, rank, explain, fit users."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort

from .active import SELECTION_PRIOR, choose_pair, preference_probability_from, prior_covariance
from .deprecated import renamed
from .catalog import Catalog
from .experts import expert_cards, read_cards, read_reference, trim_card
from .features import block_prior, feature_blocks, feature_dim, pair_features
from .folder import CONFIG, ModelConfig, model_hash, read_json, read_manifest, verify_files
from .guard import check_guard, guarded_order, guarded_out
from .head import combine, expert_features, row_terms, scatter_topk, user_scores
from .personalize import RECOMMENDED, UserProfile, fit_map, resolve_weights
from .sessions import BackboneRunner, FeedHelper, load_graphs, run_feeds, runs_side_by_side
from .text import Prompt, TextTokenizer, check_prompt, check_response

log = logging.getLogger("moerm_lite")

DEFAULT_MODEL = "moerm-minilm"
DEFAULT_THREADS = 4  # capped at the machine's cores
PAIRS_PER_CHUNK = 512  # pairs featurized per head call: bounds memory on long inputs
BATCH_SIZE = 128  # most texts per backbone call
TOKENS_PER_BATCH = 256  # most padded tokens per backbone call: a long text runs alone, short ones share a call;
#                         on AMD EPYC (2 cores) 256 ranked 5 real replies 1.29x faster than 2,048 and scored
#                         1.15x the texts/s (bench/run.py, "token budget" rows); it also bounds activation memory
User = Union[None, UserProfile, Sequence[float], np.ndarray]


def default_model_candidates() -> list[Path]:
    """Where ``RewardModel.load()`` looks for the default model, in order: ``$MOERM_LITE_MODEL``, the
    model installed with the package (``moerm_lite/models/``), the ``models/`` folder of a checkout."""
    here = Path(__file__).resolve().parent
    env = os.environ.get("MOERM_LITE_MODEL")
    return ([Path(env)] if env else []) + [here / "models" / DEFAULT_MODEL, here.parent / "models" / DEFAULT_MODEL]


def default_model_path() -> Path:
    """The first of :func:`default_model_candidates` that exists (``$MOERM_LITE_MODEL`` always wins)."""
    candidates = default_model_candidates()
    if os.environ.get("MOERM_LITE_MODEL"):
        return candidates[0]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(
        "the default model was not found; looked in " + ", ".join(str(c) for c in candidates)
        + ". Pass a model folder, RewardModel.load('path/to/folder') or --model, or set MOERM_LITE_MODEL")


class RewardModel:
    """A sparse Mixture-of-Experts reward model running on onnxruntime.

    Thread-safe: the ONNX sessions and the tokenizer are created once at load
    and only read afterwards, so one model may score from many threads at once.
    """

    def __init__(self, folder: Path, config: ModelConfig, backbone: BackboneRunner,
                 head: ort.InferenceSession, tokenizer: TextTokenizer, precision: str,
                 threads: int, model_hash: str, tokens_per_batch: int = TOKENS_PER_BATCH,
                 engine: str = "onnxruntime", int8_compute: bool = False) -> None:
        self.folder, self.config, self.precision, self.threads = folder, config, precision, threads
        self.engine = engine  # what runs the backbone graph: "onnxruntime" or "openvino"
        self.int8_compute = int8_compute  # the backbone's MatMuls multiply in int8 (RewardModel.load)
        self.tokens_per_batch = tokens_per_batch
        self._backbone, self._head, self._tokenizer = backbone, head, tokenizer
        self.model_hash = model_hash  # which exact model this is (moerm_lite.folder.model_hash)
        self._w0 = np.asarray(config.w0, dtype=np.float64)  # (K,)
        P = config.prior_precision
        self._prior_precision = None if P is None else np.asarray(P, dtype=np.float64)  # (K, K)
        self.truncated_inputs = 0  # inputs truncated so far (warned about once, then logged at debug level)
        # onnxruntime with two threads or more: a second worker for a lone call's backbone feeds (FeedHelper)
        self._helper = FeedHelper() if threads >= 2 and not runs_side_by_side(backbone) else None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int | None = None,
             precision: str = "int8", tokens_per_batch: int = TOKENS_PER_BATCH,
             engine: str = "onnxruntime", compile_cache: bool | str | Path = True,
             int8_compute: bool = False) -> RewardModel:
        """Load a model folder (``None``: the shipped default) after checking its manifest.

        Args:
            path: model folder.
            threads: intra-op threads of the engine (and of the head on onnxruntime); default
                ``min(4, cpu count)``.
            precision: which graphs to run, e.g. ``"int8"`` or ``"fp32"`` (see ``config.json``).
            tokens_per_batch: most padded tokens per backbone call (results do not depend on it).
            engine: what runs the backbone graph: ``"onnxruntime"`` (default) or ``"openvino"`` (optional,
                ``pip install "moerm-lite[openvino]"``; bf16 compute on CPUs with native bf16: faster,
                scores within bf16 rounding; docs/api.md).
            compile_cache: with ``engine="openvino"``, where the compiled backbone is kept so that later
                loads skip compiling it: ``True`` (default) a folder under ``~/.cache/moerm-lite``
                (``MOERM_LITE_CACHE`` moves it), a path, or ``False`` for none. onnxruntime compiles nothing.
            int8_compute: with the onnxruntime engine (1.25 or later) and 8-bit graphs, the backbone's
                MatMuls quantize their inputs per row in blocks of 16 and multiply in int8 instead of
                folding the 8-bit weights to fp32 at load: smaller, faster on some CPUs with int8 dot
                products (an AMD EPYC with AVX-512 VNNI) and slower on others (an Intel Xeon with AMX),
                scores moved slightly, still independent of the batch (docs/api.md). Default off: the
                arithmetic the model card measured.
        """
        folder = Path(path) if path is not None else default_model_path()
        if not folder.is_dir():
            where = " (from MOERM_LITE_MODEL)" if path is None else ""
            raise FileNotFoundError(f"model folder not found: {folder}{where}")
        manifest = read_manifest(folder)
        verify_files(folder, manifest, [CONFIG])
        cfg = ModelConfig.from_dict(read_json(folder / CONFIG, "config"))
        if precision not in cfg.graphs:
            raise ValueError(f"precision {precision!r} is not in this model; available: {sorted(cfg.graphs)}")
        if threads is None:
            threads = min(DEFAULT_THREADS, os.cpu_count() or 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if isinstance(tokens_per_batch, bool) or not isinstance(tokens_per_batch, int) or tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be a positive int, got {tokens_per_batch!r}")
        if not isinstance(compile_cache, (bool, str, Path)):
            raise ValueError(f"compile_cache must be True, False or a folder, got {compile_cache!r}")
        if not isinstance(int8_compute, bool):
            raise ValueError(f"int8_compute must be True or False, got {int8_compute!r}")
        backbone, head, tokenizer = load_graphs(folder, cfg, manifest, precision, threads, engine, compile_cache,
                                                int8_compute)
        return cls(folder, cfg, backbone, head, tokenizer, precision, threads, model_hash(manifest),
                   tokens_per_batch, engine, int8_compute)

    # -------------------------------------------------------------- properties
    @property
    def n_experts(self) -> int:
        """K, the number of experts."""
        return self.config.n_experts

    @property
    def experts_per_input(self) -> int:
        """k, the routed experts per (prompt, response) (``top_k`` in config.json and the paper); the
        ``n_shared`` always-active experts come on top."""
        return self.config.top_k

    top_k = renamed("top_k", "experts_per_input", "``rank(top_k=)`` is the number of responses")

    @property
    def expert_names(self) -> list[str]:
        """One name per expert, (K,)."""
        return list(self.config.expert_names)

    @property
    def prior_precision(self) -> np.ndarray | None:
        """P (K, K) of the user prior ``N(w0, (lambda P)^-1)``; ``None`` means the identity."""
        return None if self._prior_precision is None else self._prior_precision.copy()

    @property
    def w0(self) -> np.ndarray:
        """Population weights, (K,): the weights of an unknown user."""
        return self._w0.copy()

    # ------------------------------------------------------------ core forward
    def expert_outputs(self, pairs: Sequence[tuple[Prompt, str]], *, batch_size: int = BATCH_SIZE,
                       progress: Callable[[int], None] | None = None, allow_empty: bool = True,
                       with_features: bool = False) -> dict[str, np.ndarray]:
        """Dense per-expert outputs for (prompt, response) pairs, in input order.

        Each distinct prompt and response text is embedded once per ``PAIRS_PER_CHUNK`` pairs (a
        ranking call embeds its prompt once, not once per candidate). ``progress``, if given, is
        called with the number of pairs done after each chunk. An empty response is scored unless
        ``allow_empty=False``.

        Returns:
            ``{"gating_output": (N, K), "rewards": (N, K), "truncated": (N,) bool}``;
            unselected experts have gate and reward 0, and a request gate's experts (``config.request_gate``,
            moerm_lite/request_gate.py) gate 0 where it is off. ``with_features``: also ``"features"`` (N, F)
            float32, the head's input (``pair_features``) from the same embedding pass.
        """
        kept: list[np.ndarray] | None = [] if with_features else None
        idx, gates, rewards, truncated = self._head_outputs(self._check_pairs(pairs, allow_empty=allow_empty),
                                                           batch_size, progress, kept)
        gating, rewards = scatter_topk(idx, gates, rewards, self.n_experts)  # (N, K) each
        out = {"gating_output": gating, "rewards": rewards, "truncated": truncated}
        if kept is not None:
            out["features"] = self._stacked(kept)  # (N, F)
        return out

    def _stacked(self, kept: list[np.ndarray]) -> np.ndarray:
        """The per-chunk features ``_head_outputs`` kept, as one (N, F) array."""
        F = feature_dim(self.config.hidden_size, self.config.feature_layout)
        return np.concatenate(kept) if kept else np.zeros((0, F), np.float32)

    def _head_outputs(self, texts: list[tuple[str, str]], batch_size: int,
                      progress: Callable[[int], None] | None = None, kept: list[np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The head's sparse outputs for checked pairs: expert_index, gates, rewards, each
        (N, k + n_shared), and which pairs were truncated, (N,) bool. The head's input features of
        each chunk are appended to ``kept`` when it is a list. A model with a request gate has its experts'
        gates at 0 where the gate is off."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        N, cfg, width = len(texts), self.config, self.experts_per_input + self.config.n_shared
        idx = np.zeros((N, width), dtype=np.int64)  # (N, k + n_shared)
        gates = np.zeros((N, width), dtype=np.float32)  # (N, k + n_shared)
        rewards = np.zeros((N, width), dtype=np.float32)  # (N, k + n_shared)
        truncated = np.zeros(N, dtype=bool)  # (N,)
        for start in range(0, N, PAIRS_PER_CHUNK):
            chunk = texts[start:start + PAIRS_PER_CHUNK]
            x, cut, on = self._pair_features(chunk, batch_size)  # (B, F), (B,), (B,) or None
            rows = slice(start, start + len(chunk))
            idx[rows], gates[rows], rewards[rows] = self._head.run(cfg.head_outputs, {cfg.head_input: x})
            if on is not None and cfg.request_gate is not None:  # the request gate (request_gate.py)
                gates[rows] = cfg.request_gate.apply(idx[rows], gates[rows], on)  # (B, k + n_shared)
            truncated[rows] = cut
            if kept is not None:
                kept.append(x)
            if progress is not None:
                progress(len(chunk))
        if truncated.any():
            self._note_truncation(int(truncated.sum()), N)
        if not (np.isfinite(gates).all() and np.isfinite(rewards).all()):
            raise FloatingPointError("the model produced NaN or inf; the model files may be broken")
        return idx, gates, rewards, truncated

    def _note_truncation(self, n: int, of: int) -> None:
        """Say that inputs were truncated: a warning the first time for this model, then at debug level."""
        first = self.truncated_inputs == 0
        self.truncated_inputs += n
        log.log(logging.WARNING if first else logging.DEBUG,
                "%d of %d inputs were truncated (%d so far for this model): a prompt or response was longer "
                "than max_length=%d tokens (a prompt keeps its end, a response its start)%s", n, of,
                self.truncated_inputs, self.config.max_length,
                "; later truncations are logged at debug level" if first else "")

    def encode_catalog(self, pairs: Sequence[tuple[Prompt, str]], ids: Sequence[Any] | None = None, *,
                       batch_size: int = BATCH_SIZE, progress: Callable[[int], None] | None = None,
                       with_features: bool = True) -> Catalog:
        """Encode (prompt, response) candidates once, to rank them for any user without the backbone.

        ``ids`` name the candidates (default ``"0"``, ``"1"``, ...). ``catalog.rank(user)`` equals
        ``rank()`` on the same texts; ``catalog.save(path)`` / ``Catalog.load(path)`` keep it.
        ``with_features`` (default): also keep each candidate's pair features (F floats, about 3 KB), which
        profiles with a residual (``fit_user``'s default) need; ``False`` keeps a catalog that ranks only
        profiles of expert weights alone (``fit_user(..., residual_strength=None)``) and plain weights.
        """
        texts = self._check_pairs(pairs)
        if ids is None:
            ids = [str(i) for i in range(len(texts))]
        elif isinstance(ids, (str, bytes)) or len(ids) != len(texts):
            raise ValueError(f"ids must be a list of {len(texts)} names, one per pair")
        kept: list[np.ndarray] | None = [] if with_features else None
        idx, gates, rewards, _ = self._head_outputs(texts, batch_size, progress, kept)
        X = None if kept is None else self._stacked(kept)  # (N, F)
        return Catalog([str(i) for i in ids], idx, gates, rewards, n_experts=self.n_experts, w0=self._w0,
                       model_id=self.config.model_id, model_hash=self.model_hash, pair_features=X)

    def pair_features(self, pairs: Sequence[tuple[Prompt, str]], *,
                      batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """The head's input for (prompt, response) pairs: features (N, F) float32 (see
        :mod:`moerm_lite.features`) and which pairs were truncated, (N,) bool."""
        x, cut, _ = self._pair_features(self._check_pairs(pairs), batch_size)
        return x, cut

    def _pair_features(self, pairs: list[tuple[str, str]], batch_size: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``pair_features`` on checked texts, and where the request gate is on (None: the model has none);
        each distinct prompt and response is embedded once."""
        prompts = sorted({p for p, _ in pairs if p.strip()})
        responses = sorted({r for _, r in pairs})
        p_ids, p_cut = self._tokenizer.encode(prompts, "prompt")
        r_ids, r_cut = self._tokenizer.encode(responses, "response")
        P, R = self._embed_sets([p_ids, r_ids], batch_size)  # (Np, H), (Nr, H): the prompt beside the replies
        pi = {p: i for i, p in enumerate(prompts)}
        ri = {r: i for i, r in enumerate(responses)}
        H = R.shape[1]
        P_rows = np.stack([P[pi[p]] if p in pi else np.zeros(H, np.float32) for p, _ in pairs])  # (N, H)
        R_rows = R[[ri[r] for _, r in pairs]]  # (N, H)
        cut = np.array([bool(p in pi and p_cut[pi[p]]) or bool(r_cut[ri[r]]) for p, r in pairs])  # (N,)
        gate = self.config.request_gate
        on = None if gate is None else gate.on(P_rows, [p for p, _ in pairs])  # (N,)
        return pair_features(P_rows, R_rows, [p for p, _ in pairs], [r for _, r in pairs],
                             self.config.feature_layout), cut, on

    def embed(self, texts: Sequence[str], *, role: str = "response",
              batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Backbone embeddings (N, H) float32 of single texts, and which were truncated (N,) bool.

        ``role="prompt"`` keeps the end of a text longer than ``max_length`` tokens, ``"response"``
        its start. Batches are length-sorted and padded to their longest member, and hold at most
        ``batch_size`` texts and ``tokens_per_batch`` padded tokens (many short texts per call, few
        long ones); the result does not depend on ``batch_size``.
        """
        ids, truncated = self._tokenizer.encode(texts, role)
        return self._embed_sets([ids], batch_size)[0], truncated

    def _embed_sets(self, sets: list[list[np.ndarray]], batch_size: int) -> list[np.ndarray]:
        """Backbone embeddings (N_s, H) float32 of each set of tokenized texts, each set batched as ``embed``
        says and never with another set's texts (a short prompt padded to its replies' length costs more than
        its own call), all the sets' backbone calls run together, the largest first (``run_feeds``: side by
        side where the backbone or the model's helper allows)."""
        # one text per call where a padded batch would change the numbers (dynamic-int8 graphs), so that a score
        # never depends on its batch, and for a runner that runs texts side by side (OpenVINO: one per stream;
        # its bf16 kernels would also round a padded batch differently)
        per_sequence = self.config.graphs[self.precision].per_sequence or runs_side_by_side(self._backbone)
        groups: list[tuple[int, list[int]]] = []  # (set, its texts) of each backbone call
        for s, ids in enumerate(sets):
            order = np.argsort([len(x) for x in ids], kind="stable")  # length buckets: less padding
            start = 0
            while start < len(order):
                # up to batch_size texts and at most tokens_per_batch padded tokens (the longest text last)
                stop = start + 1
                while (stop < len(order) and stop - start < batch_size
                       and (stop - start + 1) * len(ids[order[stop]]) <= self.tokens_per_batch):
                    stop += 1
                idx = [int(i) for i in order[start:stop]]
                start = stop
                groups += [(s, [i]) for i in idx] if per_sequence else [(s, idx)]
        # the calls of most padded tokens first, so that two running side by side end together
        groups.sort(key=lambda g: -len(g[1]) * len(sets[g[0]][g[1][-1]]))
        padded = (self._tokenizer.pad([sets[s][i] for i in g]) for s, g in groups)  # each as it is taken
        feeds = ({name: feed[name] for name in self.config.backbone_inputs} for feed in padded)
        out = [np.zeros((len(ids), self.config.hidden_size), np.float32) for ids in sets]  # (N_s, H) each

        def store(call: int, emb: np.ndarray) -> None:  # emb: (len(g), H)
            s, g = groups[call]
            out[s][g] = emb

        run_feeds(self._backbone, self.config.backbone_output, feeds, store, self._helper)
        return out

    # ----------------------------------------------------------------- scoring
    def score_pairs(self, pairs: Sequence[tuple[Prompt, str]], *, user: User = None,
                    batch_size: int = BATCH_SIZE, progress: Callable[[int], None] | None = None,
                    allow_empty: bool = True) -> np.ndarray:
        """Scores of (prompt, response) pairs, (N,) float64, in input order.

        ``progress``, if given, is called with the number of pairs done after each batch. An empty
        or whitespace-only response is scored like any text; ``allow_empty=False`` refuses it.
        """
        w, v = self.user_terms(user)
        out = self.expert_outputs(pairs, batch_size=batch_size, progress=progress, allow_empty=allow_empty,
                                  with_features=v is not None)
        return user_scores(out, w, v)  # (N,)

    def score_rows(self, pairs: Sequence[tuple[Prompt, str]], terms: Sequence[tuple[np.ndarray, np.ndarray | None]],
                   *, batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Each pair scored for its own user: ``terms[i]`` is :meth:`user_terms` of row i's user. Returns
        the per-expert contributions ``pi * r * w`` (N, K) and the residual terms ``x . v`` (N,), float64;
        a row's score is ``contributions.sum() + residual``."""
        if len(terms) != len(pairs):
            raise ValueError(f"score_rows: {len(pairs)} pairs but {len(terms)} users' terms")
        with_residual = any(v is not None for _, v in terms)
        out = self.expert_outputs(pairs, batch_size=batch_size, with_features=with_residual)
        return row_terms(out["gating_output"], out["rewards"], out.get("features"), list(terms))

    def score(self, prompt: Prompt, responses: str | Sequence[str], *, user: User = None,
              batch_size: int = BATCH_SIZE, allow_empty: bool = True) -> float | np.ndarray:
        """Score one response (returns ``float``) or a list of them (returns (n,) array)."""
        if isinstance(responses, str):
            pair = self.check_pair((prompt, responses))
            return float(self.score_pairs([pair], user=user, allow_empty=allow_empty)[0])
        responses = self._check_list(responses, "responses")
        return self.score_pairs([(prompt, r) for r in responses], user=user, batch_size=batch_size,
                                allow_empty=allow_empty)

    def rank(self, prompt: Prompt, responses: Sequence[str], *, user: User = None,
             top_k: int | None = None, allow_empty: bool = True,
             population_guard: float | None = None) -> list[dict[str, Any]]:
        """Responses sorted by score, best first: ``[{"corpus_id", "score", "text"}, ...]``.

        ``top_k`` (a positive int) keeps the best ``top_k``; ties keep input order.
        ``population_guard`` (a probability in (0.5, 1), such as 0.9; ``moerm_lite.guard``): a response the
        population prefers the best candidate to with a probability above it is *guarded out*: the user's
        scores order the others, and the guarded-out ones follow in the population's order. Each item then
        also has ``"population_score"`` and ``"guarded"``.
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                                  or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if population_guard is not None:
            check_guard(population_guard)
        responses = self._check_list(responses, "responses")
        w, v = self.user_terms(user)
        out = self.expert_outputs([(prompt, r) for r in responses], allow_empty=allow_empty,
                                  with_features=v is not None)
        scores = user_scores(out, w, v)  # (n,)
        if population_guard is None:
            order = np.argsort(-scores, kind="stable")[:top_k]
            return [{"corpus_id": int(i), "score": float(scores[i]), "text": responses[i]} for i in order]
        population = combine(out["gating_output"], out["rewards"], self._w0)  # (n,)
        order = guarded_order(scores, population, population_guard)
        demoted = guarded_out(population, population_guard)  # (n,)
        return [{"corpus_id": int(i), "score": float(scores[i]), "population_score": float(population[i]),
                 "guarded": bool(demoted[i]), "text": responses[i]} for i in order[:top_k]]

    def explain(self, prompt: Prompt, response: str, *, user: User = None) -> dict[str, Any]:
        """Per-expert breakdown of one score.

        Returns ``{"score", "rewards" (K,), "gating_output" (K,), "weights" (K,),
        "contributions" (K,), "residual", "experts", "by_expert", "truncated"}`` where
        ``score == sum(contributions) + residual`` and ``contributions == gating_output * weights * rewards``;
        ``residual`` is the user's residual term ``x . v`` (0.0 without one, see ``fit_user``);
        ``by_expert`` names the experts this input was routed to (and the shared ones; not a request gate's
        experts where the gate is off),
        ``[{"expert": name, "contribution": float}, ...]``, largest contribution (either sign) first.
        """
        w, v = self.user_terms(user)
        out = self.expert_outputs([self.check_pair((prompt, response))], with_features=v is not None)
        gates, rewards = out["gating_output"][0], out["rewards"][0]  # (K,), (K,)
        contributions = expert_features(gates, rewards) * w + 0.0  # (K,); + 0.0: no -0.0 for unrouted experts
        residual = 0.0 if v is None else float(out["features"][0].astype(np.float64) @ v)
        names = self.expert_names
        by_expert = [{"expert": names[k], "contribution": float(contributions[k])}
                     for k in np.argsort(-np.abs(contributions), kind="stable") if gates[k] > 0]
        return {"score": float(contributions.sum()) + residual, "rewards": rewards, "gating_output": gates,
                "weights": w.copy(), "contributions": contributions, "residual": residual,
                "experts": names, "by_expert": by_expert, "truncated": bool(out["truncated"][0])}

    # ---------------------------------------------------------- personalizing
    def comparison_features(self, comparisons: Iterable[dict[str, Any]], *,
                            batch_size: int = BATCH_SIZE) -> np.ndarray:
        """phi = (pi * r)(chosen) - (pi * r)(rejected) for each comparison, (N, K)."""
        return self.comparison_terms(comparisons, batch_size=batch_size)[0]

    def comparison_terms(self, comparisons: Iterable[dict[str, Any]], *, batch_size: int = BATCH_SIZE,
                         with_pair_features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """What a fit needs of comparisons, from one embedding pass: phi (N, K) as
        :meth:`comparison_features`, and with ``with_pair_features`` the chosen-minus-rejected pair
        features (N, F) a residual is fitted on (else None)."""
        if isinstance(comparisons, (str, bytes, dict)) or not isinstance(comparisons, Iterable):
            raise TypeError(f"comparisons must be a list of dicts, got {type(comparisons).__name__}")
        pairs: list[tuple[Prompt, str]] = []
        for i, c in enumerate(comparisons):
            pairs += self.check_comparison(c, f"comparison {i}")
        out = self.expert_outputs(pairs, batch_size=batch_size, with_features=with_pair_features)
        phi = expert_features(out["gating_output"], out["rewards"])  # (2N, K)
        X = out["features"].astype(np.float64) if with_pair_features else None  # (2N, F)
        return phi[0::2] - phi[1::2], None if X is None else X[0::2] - X[1::2]  # (N, K), (N, F)

    def fit_user(self, comparisons: Iterable[dict[str, Any]], *, user_id: str | None = None,
                 prior_strength: float | None = None,
                 residual_strength: float | str | None = RECOMMENDED,
                 residual_prior: dict[str, float] | str | None = RECOMMENDED) -> UserProfile:
        """Fit a user's signed expert weights from ``{"prompt", "chosen", "rejected"}`` records, and a
        regularized residual over the pair features for what the experts cannot express.

        ``prior_strength`` (lambda) defaults to the model's measured ``default_prior_strength``.
        Zero comparisons give the population weights ``w0``. ``residual_strength``: ``"recommended"``
        (default) is the folder's ``recommended_residual_strength`` (30 for the shipped model: the residual
        moves scores only with many comparisons, docs/decisions/residual.md); a number fixes it;
        ``"evidence"`` chooses it (or none) for this user, at every fit, by the Laplace evidence of the user's
        own comparisons, ``"auto"`` by their approximate leave-one-out likelihood
        (``moerm_lite.personalize.choose_residual``); ``None`` fits the expert weights alone. A catalog
        ranks a profile with a residual only if encoded ``with_features=True`` (the default).
        ``residual_prior``: how freely the residual may use each block of the pair features
        (``moerm_lite.features.BLOCKS``), e.g. ``{"relevance": 0.1, "statistics": 3.0}`` (a block not named:
        1); ``"recommended"`` (default) is the folder's ``recommended_residual_prior``, ``None`` every feature
        alike (the shipped model's; docs/decisions/residual.md).
        """
        strength = self.config.default_prior_strength if prior_strength is None else prior_strength
        if residual_strength == RECOMMENDED:
            residual_strength = self.config.recommended_residual_strength
        if isinstance(residual_prior, str) and residual_prior == RECOMMENDED:
            residual_prior = self.config.recommended_residual_prior
        elif isinstance(residual_prior, str):
            raise ValueError(f"residual_prior must be {RECOMMENDED!r}, None or a scale per block, "
                             f"got {residual_prior!r}")
        sizes = feature_blocks(self.config.hidden_size, self.config.feature_layout)
        blocks = None if residual_prior is None else block_prior(residual_prior, sizes)
        phi, X = self.comparison_terms(comparisons, with_pair_features=residual_strength is not None)
        return UserProfile(user_id=user_id, prior_strength=strength, prior_precision=self._prior_precision,
                           model_id=self.config.model_id, model_hash=self.model_hash,
                           residual_strength=residual_strength, residual_prior=blocks).fit(phi, self._w0, X)

    def update_user(self, profile: UserProfile, comparisons: Iterable[dict[str, Any]]) -> UserProfile:
        """Fold new ``{"prompt", "chosen", "rejected"}`` records into ``profile`` (fitted for this
        model): exactly the weights of one fit on all its comparisons. Returns the profile."""
        self.user_terms(profile)  # fitted, and for this model
        phi, X = self.comparison_terms(comparisons, with_pair_features=profile.residual_strength is not None)
        return profile.partial_fit(phi, X)

    def next_comparison(self, prompt: Prompt, candidates: Sequence[str], *,
                        user: User = None) -> dict[str, Any]:
        """The pair of candidate responses whose answer would tell the most about this user.

        Until the user has answered ``ACCURACY_AFTER`` (5) comparisons, every pair is rated by how much its
        answer is expected to shrink the posterior variance of all candidate pairs' score differences;
        after that, by how many of the candidate pairs the posterior is expected to order right after its
        answer (:mod:`moerm_lite.active`). Both rate pairs under a *selection* posterior: the user's
        comparisons (a :class:`UserProfile`'s; none for ``user=None`` or a plain weight vector) fitted again
        under a prior ``SELECTION_PRIOR`` (3) times stronger than theirs. The user's predicted answer comes
        from their own posterior (the profile's Laplace posterior, or the prior ``N(w0, (lambda P)^-1)``).
        A profile's residual (``residual_strength``) enters as a known offset: its uncertainty is not
        modelled (it is strongly regularized, and moved only by many comparisons). Ask the user to compare
        the two responses, then ``model.update_user(profile, [...])``.

        Returns:
            ``{"pair": (i, j), "responses": (a, b), "criterion": "variance_reduction" or
            "expected_accuracy", "variance_reduction": expected drop, "expected_accuracy": expected share
            of the pairs ordered right after the answer (None before 5 answers), "p_first": P(user prefers
            a), "variance": posterior variance of s(a) - s(b)}``; the last two under the user's posterior.
        """
        candidates = self._check_list(candidates, "candidates")
        if len(candidates) < 2:
            raise ValueError(f"next_comparison needs at least 2 candidates, got {len(candidates)}")
        mean, v = self.user_terms(user)  # (K,), (F,) or None: what the user is scored with
        lam = self.config.default_prior_strength
        if not isinstance(user, UserProfile):  # no answers yet: the prior
            answers, cov = 0, prior_covariance(lam, self._prior_precision, self.n_experts)  # (K, K)
            select = (mean, cov / SELECTION_PRIOR)
        else:
            answers, cov = user.n_comparisons_, user.covariance_
            select = ((mean, cov) if user.expert_features_ is None  # saved without its comparisons
                      else fit_map(user.expert_features_, user.w0_, SELECTION_PRIOR * user.prior_strength,
                                   user.prior_precision))
        out = self.expert_outputs([(prompt, c) for c in candidates], with_features=v is not None)
        f = expert_features(out["gating_output"], out["rewards"])  # (n, K)
        offset = np.zeros(len(f)) if v is None else out["features"].astype(np.float64) @ v  # (n,) residuals
        choice = choose_pair(f, *select, answers, offset)
        a, c = choice["pair"]
        d = f[a] - f[c]  # (K,)
        variance = float(d @ cov @ d)
        p_first = preference_probability_from(np.array(d @ mean + offset[a] - offset[c]), np.array(variance))
        return {"pair": (a, c), "responses": (candidates[a], candidates[c]),
                **{k: val for k, val in choice.items() if k != "pair"},
                "p_first": float(p_first), "variance": variance}

    def describe_experts(self, *, n_texts: int = 3, n_attributes: int | None = 3) -> list[dict[str, Any]]:
        """Expert cards: what each expert does, read off the reference corpus shipped in the folder.

        Per expert: ``{"expert", "name", "routing_share", "routing_share_by_source",
        "highest", "lowest", "correlations"}`` (see :mod:`moerm_lite.experts`). Cards computed at
        export (``expert_cards.json``) are read, not recomputed, when they hold enough texts.
        """
        stored = self.config.extra.get("expert_cards")
        if stored:
            cards = read_cards(self.folder, stored)
            if all(len(c["highest"]) >= n_texts or len(c["highest"]) == c["n_routed"] for c in cards):
                return [trim_card(c, n_texts, n_attributes) for c in cards]
        return self.compute_expert_cards(n_texts=n_texts, n_attributes=n_attributes)

    def compute_expert_cards(self, *, n_texts: int = 3, n_attributes: int | None = 3) -> list[dict[str, Any]]:
        """Expert cards computed now, by scoring the folder's reference corpus (tens of seconds)."""
        rel = self.config.extra.get("reference")
        if not rel:
            raise ValueError(f"model {self.config.model_id!r} ships no reference corpus (config.json has no "
                             "'reference'); re-export it to get expert cards")
        rows = read_reference(self.folder, rel)
        out = self.expert_outputs([(r.get("prompt", ""), r["response"]) for r in rows])
        return expert_cards(rows, out["gating_output"], out["rewards"], self.expert_names, n_texts=n_texts,
                            n_attributes=n_attributes)

    def describe_user(self, profile: UserProfile, *, top: int = 3) -> dict[str, Any]:
        """:meth:`UserProfile.describe` with this model's expert names (the profile must be this model's)."""
        self.check_profile(profile)
        return profile.describe(self.expert_names, top=top)

    # ----------------------------------------------------------------- checks
    def check_profile(self, profile: UserProfile) -> None:
        """Raise ``ValueError`` unless ``profile`` is fitted and was fitted for this exact model."""
        self.user_terms(profile)

    def user_weights(self, user: User) -> np.ndarray:
        """The (K,) weights scores use for ``user``: ``w0`` for ``None``, a profile's or a vector's own.
        A profile with a residual is refused here: expert weights alone do not give its scores."""
        return resolve_weights(user, self._w0, self.config.model_id, self.model_hash)

    def user_terms(self, user: User) -> tuple[np.ndarray, np.ndarray | None]:
        """What scores use for ``user``: weights (K,) as :meth:`user_weights`, and a profile's residual over
        pair features (F,), or None; a score is ``w . (pi * r) + x . v``."""
        w = resolve_weights(user, self._w0, self.config.model_id, self.model_hash, allow_residual=True)
        if not isinstance(user, UserProfile) or user.residual_ is None:
            return w, None
        F = feature_dim(self.config.hidden_size, self.config.feature_layout)
        if user.residual_.shape != (F,):
            raise ValueError(f"user profile {user.user_id!r} has a residual of shape {user.residual_.shape}; "
                             f"this model's pair features have {F}")
        return w, user.residual_

    def check_pair(self, pair: Any, where: str = "") -> tuple[str, str]:
        """One (prompt, response) as checked texts; ``TypeError``/``ValueError`` naming ``where`` if bad."""
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{where or 'a pair'} must be a (prompt, response) tuple, got {pair!r:.80}")
        n, of = self.config.max_chars, f" of {where}" if where else ""
        return check_prompt(pair[0], n, f"prompt{of}"), check_response(pair[1], n, f"response{of}")

    def check_comparison(self, comparison: Any, where: str = "comparison") -> list[tuple[str, str]]:
        """A ``{"prompt", "chosen", "rejected"}`` record as its two checked (prompt, response) pairs."""
        c = comparison
        if not isinstance(c, dict) or "chosen" not in c or "rejected" not in c:
            raise ValueError(f"{where} must be a dict with 'chosen' and 'rejected' (and 'prompt'), got {c!r:.80}")
        n = self.config.max_chars
        prompt = check_prompt(c.get("prompt", ""), n, f"prompt of {where}")
        return [(prompt, check_response(c["chosen"], n, f"chosen of {where}")),
                (prompt, check_response(c["rejected"], n, f"rejected of {where}"))]

    def _check_pairs(self, pairs: Sequence[tuple[Prompt, str]], allow_empty: bool = True) -> list[tuple[str, str]]:
        if isinstance(pairs, (str, bytes, dict)) or not isinstance(pairs, Iterable):
            raise TypeError(f"pairs must be a list of (prompt, response) tuples, got {type(pairs).__name__}")
        checked = [self.check_pair(pr, f"pair {i}") for i, pr in enumerate(pairs)]
        if not allow_empty:
            for i, (_, r) in enumerate(checked):
                check_response(r, self.config.max_chars, f"response of pair {i}", allow_empty=False)
        return checked

    @staticmethod
    def _check_list(responses: Any, what: str) -> list[str]:
        """A list of response texts; ``TypeError`` naming ``what`` and the item otherwise."""
        if isinstance(responses, (str, bytes, dict, set, frozenset)) or not isinstance(responses, Iterable):
            raise TypeError(f"{what} must be a list of strings, got {type(responses).__name__}")
        texts = list(responses)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{what}[{i}] must be a string, got {type(t).__name__}")
        return texts

    def __repr__(self) -> str:
        return (f"RewardModel({self.config.model_id!r}, n_experts={self.n_experts}, experts_per_input={self.experts_per_input}, "
                f"precision={self.precision!r}, threads={self.threads}"
                + (f", engine={self.engine!r}" if self.engine != "onnxruntime" else "")
                + (", int8_compute=True)" if self.int8_compute else ")"))
