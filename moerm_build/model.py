"""The sparse MoE reward model in torch (the formula the runtime computes in ONNX + numpy).

    x        = pair_features(embed(prompt), embed(response))  (B, F)   moerm_lite.features
    h        = (x - mean) / std                                (B, F)   standardised on training pairs
    logits   = router(h)                                       (B, K - S)
    pi       = softmax over the top-k logits, 0 elsewhere; 1 for the S shared experts   (B, K)
    r_k      = w2_k . relu(W1_k h + b1_k) + b2_k               (B, K)   expert reward heads
    r_k      = c * tanh(r_k / c)        (if reward_bound c > 0)   (B, K)   bounded rewards
    s        = sum_k pi_k * w_k * r_k                          (B,)     w: a user's signed weights

The last S experts are shared (always active, DeepSeekMoE-style): they carry what every
reply has to some degree, which routed experts cannot, since an input only reaches k of them.
They see the text statistics only (``shared_skip``: not the embeddings): cosine relevance,
length, layout and style rates, which carry over to new prompts; what a reply is about stays
with the routed experts. The last ``n_readout`` shared experts are the exception: linear read-outs of
every feature, fitted after training (``moerm_build.train.readout``: the population's helpfulness data, and one per
text attribute of the attribute users' replies).

Training user u has weights ``w0 + user_weights[u]`` (an L2 penalty on the offset is the training-time
twin of the MAP prior that fits new users); ``w0`` is the population vector used for records without a
user and for unknown users at run time. For top_k = 1 the gate is the
full-softmax probability of the chosen expert (a renormalised single logit has no gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    n_features: int = 775  # F, pair features (moerm_lite.features.feature_dim(hidden_size), 384 for MiniLM)
    n_experts: int = 32  # K, all experts: routed and shared
    n_shared: int = 0  # S, always-active experts (the last S)
    shared_skip: int = 0  # leading feature columns the shared experts never see (2H: the embeddings)
    top_k: int = 2  # k, experts routed per input (of the K - S routed ones)
    expert_hidden: int = 64  # D, hidden units of each expert MLP
    n_users: int = 0  # rows of the training-user weight table
    n_types: int = 0  # latent preference types (mixture mode, no user ids)
    reward_bound: float = 0.0  # c > 0: rewards c * tanh(r / c) in (-c, c); 0: unbounded
    n_readout: int = 0  # the last n_readout shared experts see every feature (moerm_build.train.readout)
    readout_variance: list[float] = field(default_factory=list)  # per read-out: its prior variance (0: median)

    @property
    def gating(self) -> str:
        return "full_softmax" if self.top_k == 1 else "topk_softmax"


class MoEHead(nn.Module):
    """Router + K expert reward heads + user weights, on top of a pooled embedding."""

    feat_mean: torch.Tensor  # buffers, declared for the type checker (register_buffer sets them)
    feat_std: torch.Tensor
    w1_mask: torch.Tensor

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        n_in, K, D = args.n_features, args.n_experts, args.expert_hidden  # n_in = F, the pair features
        self.register_buffer("feat_mean", torch.zeros(n_in))  # (F,) feature standardisation
        self.register_buffer("feat_std", torch.ones(n_in))  # (F,)
        mask = torch.ones(K, n_in, 1)
        mask[K - args.n_shared:K - args.n_readout, : args.shared_skip] = 0.0  # shared: form, not content
        self.register_buffer("w1_mask", mask)  # (K, F, 1)
        self.router = nn.Linear(n_in, K - args.n_shared)
        self.w1 = nn.Parameter(torch.randn(K, n_in, D) / math.sqrt(n_in))  # (K, F, D)
        self.b1 = nn.Parameter(torch.zeros(K, D))  # (K, D)
        self.w2 = nn.Parameter(torch.randn(K, D) / math.sqrt(D))  # (K, D)
        self.b2 = nn.Parameter(torch.zeros(K))  # (K,)
        self.w0 = nn.Parameter(torch.zeros(K))  # (K,) population weights
        self.user_weights = nn.Parameter(0.01 * torch.randn(args.n_users, K))  # (U, K) offsets from w0
        self.type_weights = nn.Parameter(torch.randn(args.n_types, K))  # (M, K) latent types

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feat_mean) / self.feat_std  # (B, F)

    def gates(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense gates pi (B, K), router probabilities (B, K - S), selected indices (B, k)."""
        logits = self.router(h)  # (B, K - S)
        top, idx = logits.topk(self.args.top_k, dim=-1)  # (B, k)
        probs = logits.softmax(-1)  # (B, K - S)
        sel = probs.gather(1, idx) if self.args.top_k == 1 else top.softmax(-1)  # (B, k)
        pi = torch.zeros_like(logits).scatter(1, idx, sel)  # (B, K - S)
        shared = torch.ones(len(h), self.args.n_shared, dtype=pi.dtype, device=pi.device)  # (B, S)
        return torch.cat([pi, shared], 1), probs, idx

    def expert_w1(self) -> torch.Tensor:
        """W1 (K, F, D) as used: the shared experts' rows for skipped columns are 0."""
        return self.w1 * self.w1_mask

    def rewards(self, h: torch.Tensor) -> torch.Tensor:
        """Every expert's reward, (B, K). Training evaluates all; the exported graph only the routed."""
        K, n_in, D = self.w1.shape  # n_in = F
        pre = h @ self.expert_w1().permute(1, 0, 2).reshape(n_in, K * D)  # (B, K*D): one GEMM for all experts
        hidden = F.relu(pre.view(-1, K, D) + self.b1)  # (B, K, D)
        r = (hidden * self.w2).sum(-1) + self.b2  # (B, K)
        c = self.args.reward_bound
        return c * torch.tanh(r / c) if c > 0 else r

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pair features x (B, F) -> gates, rewards, expert features phi = pi * r (B, K); router_probs (B, K - S)."""
        h = self.standardize(x)
        pi, probs, idx = self.gates(h)
        r = self.rewards(h)
        return {"gating_output": pi, "rewards": r, "router_probs": probs, "expert_index": idx,
                "phi": pi * r}  # (B, K) each, idx (B, k); phi: the expert features a user's weights score

    def prior_precision(self, ridge: float = 1e-3) -> "np.ndarray | None":
        """P = (cov of the training users' offsets from w0 + ridge I)^-1, (K, K); None without enough users.

        The runtime's user prior is N(w0, (lambda P)^-1): new users may move freely along the
        experts training users disagreed on, and little along the rest.
        """
        U = self.user_weights.detach().double().cpu().numpy()  # (U, K)
        K, R = U.shape[1], self.args.n_readout
        if len(U) < 2 * K:
            return None
        C = np.cov(U.T)  # (K, K)
        if R:  # read-outs were fitted after the users (no spread of their own): as free as a typical expert,
            # or as their ``readout_variance`` says
            C[K - R:, :], C[:, K - R:] = 0.0, 0.0
            var = np.zeros(R) if not self.args.readout_variance else np.asarray(self.args.readout_variance, float)
            C[range(K - R, K), range(K - R, K)] = np.where(var > 0, var, np.median(np.diag(C)[:K - R]))  # (R,)
        P = np.linalg.inv(C + ridge * np.eye(K))  # (K, K)
        return (P + P.T) / 2

    def score(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """s = sum_k pi_k w_k r_k, (B,), for pair features x (B, F); ``w`` is (K,) or (B, K)."""
        return (self.forward(x)["phi"] * w).sum(-1)


class Backbone(nn.Module):
    """A Hugging Face encoder with mean pooling; any local folder ``AutoModel`` can read."""

    def __init__(self, path: "str | Path") -> None:
        super().__init__()
        from transformers import AutoModel

        self.path = str(path)
        self.encoder = AutoModel.from_pretrained(self.path, local_files_only=True)
        self.n_embd = int(self.encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state  # (B, L, H)
        return mean_pool(out, attention_mask)  # (B, H)

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The token embeddings and every layer's output: ``layers + 1`` tensors (B, L, H)."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=True).hidden_states

    def keep_layers(self, keep: "list[int]") -> None:
        """Keep only the transformer layers ``keep`` (indices, in order): a smaller student initialised from
        this encoder, saved and loaded like any other (its config says how many layers it has)."""
        layers = self.encoder.encoder.layer
        if not keep or sorted(set(keep)) != list(keep) or not 0 <= keep[0] <= keep[-1] < len(layers):
            raise ValueError(f"keep_layers: need increasing layer indices in 0..{len(layers) - 1}, got {keep}")
        self.encoder.encoder.layer = nn.ModuleList([layers[i] for i in keep])
        self.encoder.config.num_hidden_layers = len(keep)

    def train_top_layers(self, n: int) -> None:
        """Freeze everything but the top ``n`` transformer layers."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        if n > 0:
            layers = self.encoder.encoder.layer
            for layer in layers[len(layers) - n:]:
                for p in layer.parameters():
                    p.requires_grad_(True)


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) mean of the token states (B, L, H) over the tokens the mask keeps."""
    m = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)


def switch_load_balance(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Switch Transformer auxiliary loss K * sum_k f_k P_k (1 when routing is uniform)."""
    K = probs.shape[1]
    f = F.one_hot(idx, K).float().sum((0, 1)) / idx.numel()  # (K,) share of assignments
    return K * (f * probs.mean(0)).sum()


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the router distribution; minimising it makes routing decisive."""
    return -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()


def positive_correlation(r: torch.Tensor) -> torch.Tensor:
    """Mean squared positive off-diagonal correlation of experts' rewards over a batch.

    Only positive correlation is penalised: two experts that are a +/- pair on one axis are fine.
    """
    z = (r - r.mean(0)) / (r.std(0) + 1e-6)  # (B, K)
    c = z.T @ z / (r.shape[0] - 1)  # (K, K)
    off = c - torch.diag(torch.diagonal(c))
    K = r.shape[1]
    return F.relu(off).pow(2).sum() / (K * (K - 1))
