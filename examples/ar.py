"""A class-conditional, decoder-only transformer over tokenizer indices (LlamaGen-style).

The tokenizer turns an image into an ``h x w`` grid of positions, each carrying ``G`` small
indices (``index_groups``: e.g. levels ``[17]*4`` split ``[2, 2]`` gives ``G = 2`` indices
of vocabulary ``17*17 = 289`` each). In raster order that is a sequence ``(b, n, G)`` with
``n = h*w``. The model reads ``[class token, x_0, ..., x_{n-2}]`` and predicts ``x_0 ..
x_{n-1}``; at every position it predicts the ``G`` indices of the next position with ``G``
separate heads (one small vocabulary each, instead of one vocabulary of ``289**2``).

Blocks are pre-norm: RMSNorm -> causal multi-head self-attention -> RMSNorm -> SwiGLU MLP.
Positions are learned. The class embedding has one extra row, the "null" class, used for
classifier-free guidance (labels are replaced by it with probability ``class_dropout`` in
training). Sampling runs with a key/value cache, temperature, top-k and guidance.

Optional REPA (representation alignment; LlamaGen-REPA): with ``repa_dim > 0`` the hidden
state after block ``repa_layer`` goes through a small MLP projector (Linear-SiLU-Linear to
``repa_dim``), and ``loss(..., targets=...)`` adds ``repa_weight`` times the mean negative
cosine similarity between the projection at sequence position ``p`` and ``targets[:, p]``, the
feature of latent grid position ``p`` (the position whose tokens are predicted there) from a
frozen image encoder. Off by default (``repa_dim = 0``): then no projector is built, the
initialization and the loss are exactly those of the model without REPA. Sampling never uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


class RMSNorm(nn.Module):
    """x (..., dim) -> x / rms(x) * weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class CausalSelfAttention(nn.Module):
    """x (b, t, dim) -> (b, t, dim), causal; with ``cache`` the new keys/values are appended.

    ``cache`` is a dict ``{"k": (b, heads, t_past, head_dim), "v": ...}`` (empty at first);
    the queries of ``x`` are then the positions ``t_past .. t_past + t - 1``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (b, heads, t, hd)
        t_past = 0
        if cache is not None:
            if "k" in cache:
                t_past = cache["k"].shape[2]
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if t_past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query i (absolute position t_past + i) sees keys 0 .. t_past + i
            mask = torch.ones(t, t_past + t, dtype=torch.bool, device=x.device).tril(diagonal=t_past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, dim))


class SwiGLU(nn.Module):
    """x (b, t, dim) -> (b, t, dim): ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: x (b, t, dim) -> (b, t, dim)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(mlp_ratio * dim))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class ARTransformer(nn.Module):
    """Class-conditional autoregressive model of index sequences.

    vocab_sizes: the vocabulary of each of the ``G`` indices at a position (e.g. [289, 289]).
    seq_len: positions per image ``n`` (e.g. 16 for a 4x4 latent grid).
    """

    def __init__(
        self,
        vocab_sizes: list[int],
        seq_len: int,
        num_classes: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 8 / 3,
        class_dropout: float = 0.1,
        dropout: float = 0.0,
        repa_dim: int = 0,
        repa_layer: int | None = None,
        repa_weight: float = 0.5,
        repa_hidden: int | None = None,
    ):
        super().__init__()
        self.config = dict(
            vocab_sizes=list(vocab_sizes), seq_len=seq_len, num_classes=num_classes, dim=dim, depth=depth,
            heads=heads, mlp_ratio=mlp_ratio, class_dropout=class_dropout, dropout=dropout,
        )
        if repa_dim:
            self.config.update(repa_dim=repa_dim, repa_layer=repa_layer, repa_weight=repa_weight, repa_hidden=repa_hidden)
        self.repa_dim = int(repa_dim)
        self.repa_layer = (depth // 2 if repa_layer is None else int(repa_layer)) if repa_dim else None
        self.repa_weight = float(repa_weight)
        if self.repa_dim and not 1 <= self.repa_layer <= depth:
            raise ValueError(f"repa_layer must be in [1, depth={depth}], got {self.repa_layer}")
        self.vocab_sizes = list(vocab_sizes)
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.class_dropout = class_dropout
        self.class_embedding = nn.Embedding(num_classes + 1, dim)  # row num_classes = null class
        self.token_embeddings = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)
        self.position_embedding = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, v, bias=False) for v in vocab_sizes)
        if self.repa_dim:
            hidden = repa_hidden or 2 * dim
            self.repa_projector = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, self.repa_dim))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("w2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, t, G) int64 -> (b, t, dim): the sum of the G index embeddings."""
        return sum(emb(tokens[..., g]) for g, emb in enumerate(self.token_embeddings))

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """In training, replaces each label by the null class with probability ``class_dropout``."""
        if self.training and self.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return labels

    def forward_hidden(self, labels: torch.Tensor, tokens: torch.Tensor | None, caches: list[dict] | None = None, start: int = 0,
                       keep: dict | None = None) -> torch.Tensor:
        """Runs the transformer on a chunk of the sequence ``[class, x_0, x_1, ...]``.

        labels (b,) int64; tokens (b, t, G) or None: the inputs at positions ``start ..``
        (position 0 is the class token, position p >= 1 is x_{p-1}). ``caches``: one dict
        per block (see :class:`CausalSelfAttention`). Returns hidden states (b, t', dim).
        ``keep``: if given, ``keep["repa"]`` receives the hidden state after block ``repa_layer``.
        """
        parts = []
        if start == 0:
            parts.append(self.class_embedding(labels)[:, None])
        if tokens is not None and tokens.shape[1] > 0:
            parts.append(self.embed_tokens(tokens))
        x = torch.cat(parts, dim=1)
        x = self.dropout(x + self.position_embedding[:, start : start + x.shape[1]])
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
            if keep is not None and self.repa_layer == i + 1:
                keep["repa"] = x
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """hidden (b, t, dim) -> G logits tensors (b, t, V_g)."""
        return [head(hidden) for head in self.heads]

    def forward(self, labels: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """labels (b,), tokens (b, n, G) -> G logits (b, n, V_g); position p predicts tokens[:, p]."""
        hidden = self.forward_hidden(self.drop_labels(labels), tokens[:, :-1])
        return self.logits(hidden)

    def loss(self, labels: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor | None = None, parts: dict | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy over positions and index groups (nats), plus the REPA term.

        targets (b, n, repa_dim): frozen-encoder features per latent position; with REPA on and
        targets given, ``repa_weight * mean(-cos(projector(h_p), targets[:, p]))`` is added.
        ``parts``: if given, receives the float values ``"ce"`` and ``"repa"`` (when computed).
        """
        keep: dict | None = {} if (self.repa_dim and targets is not None) else None
        hidden = self.forward_hidden(self.drop_labels(labels), tokens[:, :-1], keep=keep)
        logits = self.logits(hidden)
        ce = sum(F.cross_entropy(lg.flatten(0, 1), tokens[..., g].flatten()) for g, lg in enumerate(logits)) / len(logits)
        if parts is not None:
            parts["ce"] = float(ce.detach())
        if keep is None:
            return ce
        if targets.shape != (tokens.shape[0], self.seq_len, self.repa_dim):
            raise ValueError(f"REPA targets must be (b, {self.seq_len}, {self.repa_dim}), got {tuple(targets.shape)}")
        align = -F.cosine_similarity(self.repa_projector(keep["repa"]), targets, dim=-1).mean()
        if parts is not None:
            parts["repa"] = float(align.detach())
        return ce + self.repa_weight * align

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        return_logits: bool = False,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Samples index sequences for ``labels`` (b,) -> tokens (b, n, G) int64.

        With ``cfg_scale != 1`` the conditional and null-class logits ``c, u`` of every step
        are combined as ``u + cfg_scale * (c - u)`` (classifier-free guidance). Then the
        logits are divided by ``temperature`` and all but the ``top_k`` largest are masked.
        ``use_cache=False`` recomputes the whole prefix at every step (the reference the
        key/value cache is tested against). ``return_logits`` also returns the G guided
        logits tensors (b, n, V_g) the tokens were drawn from.
        """
        was_training = self.training
        self.eval()
        b, device = labels.shape[0], labels.device
        guided = cfg_scale != 1.0
        cond = torch.cat([labels, torch.full_like(labels, self.null_class)]) if guided else labels
        caches = [{} for _ in self.blocks] if use_cache else None
        tokens = torch.zeros(b, 0, len(self.vocab_sizes), dtype=torch.long, device=device)
        all_logits: list[list[torch.Tensor]] = [[] for _ in self.vocab_sizes]
        for p in tqdm(range(self.seq_len), desc="ar sampling", leave=False, disable=not progress):
            inputs = torch.cat([tokens, tokens]) if guided else tokens
            if use_cache:
                new = None if p == 0 else inputs[:, -1:]
                hidden = self.forward_hidden(cond, new, caches, start=p)[:, -1]
            else:
                hidden = self.forward_hidden(cond, inputs)[:, -1]
            step = []
            for g, lg in enumerate(self.logits(hidden)):
                if guided:
                    c, u = lg.chunk(2)
                    lg = u + cfg_scale * (c - u)
                lg = lg / max(temperature, 1e-8)
                if top_k is not None and top_k < lg.shape[-1]:
                    kth = torch.topk(lg, top_k, dim=-1).values[:, -1:]
                    lg = lg.masked_fill(lg < kth, float("-inf"))
                all_logits[g].append(lg)
                probs = F.softmax(lg, dim=-1)
                step.append(torch.multinomial(probs, 1, generator=generator))
            tokens = torch.cat([tokens, torch.cat(step, dim=1)[:, None]], dim=1)
        self.train(was_training)
        if return_logits:
            return tokens, [torch.stack(lgs, dim=1) for lgs in all_logits]
        return tokens
