"""A small causal Transformer (GPT) over the code indices of a grid x grid code grid
(MNIST: 49 codes of a 7x7 grid; the shape comes from the tokenizer).

The sequence is [cond, c_0, ..., c_47] -> predicts [c_0, ..., c_48] (raster order,
common.grid). The first token doubles as start and class token: classes 0..num_classes-1
(MNIST's digits), or null_class (= num_classes) for "no label". Trained with label dropout, one model samples
unconditionally (null_class), conditionally, and with classifier-free guidance
(Ho & Salimans 2022): logits = cond + scale * (cond - uncond).

Pre-norm blocks and F.scaled_dot_product_attention as in nanoGPT; a KV cache
makes generation O(T) per token instead of recomputing the prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from common.hub import Pretrained

# MNIST's ten classes: the default, and what a run saved before num_classes was a key had
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES        # PriorShape().null_class
DISTORTED = NUM_CLASSES + 1     # PriorShape().distorted


@dataclass
class PriorShape:
    num_codes: int = 0           # K, the tokenizer's codes; 0 = take it from the tokenizer
    grid: int = 0                # side of the tokenizer's code grid; 0 = take it from the tokenizer
    num_classes: int = NUM_CLASSES   # classes of the data set (taken from it in training; 0: none)
    n_layer: int = 2             # Transformer blocks
    n_head: int = 4              # attention heads (must divide n_embd)
    n_embd: int = 112            # width of the residual stream
    dropout: float = 0.0         # residual dropout after attention and MLP, in training
    activation: Literal["gelu", "relu", "relu2", "swiglu"] = "relu"   # MLP nonlinearity; relu is the fastest on CPU
                                 # on CPU than gelu; relu2 = relu(x)^2; swiglu has a 2/3-wide gated hidden layer
    class_conditional: bool = True   # start token = the class (with label dropout) or always no-label
    label_dropout: float = 0.1   # share of labels replaced by the null class in training
    rowcol_pos: bool = False     # add row and column embeddings of the 7x7 cell being predicted
    augment_token: bool = False  # augment: distorted pictures get their own start tokens, so samples stay clean
    norm: Literal["layer", "rms"] = "layer"   # the blocks' and the final norm: LayerNorm or RMSNorm
    qk_norm: bool = False        # RMS-normalise each head's queries and keys (bounded attention logits)
    rope: Literal["none", "1d", "2d"] = "1d"   # rotary positions on queries and keys, on top of the
                                 # learned table: 1d over the sequence, 2d over the (row, column) of the 7x7 grid

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid

    @property
    def null_class(self) -> int:
        """The "no label" start token: unconditional."""
        return self.num_classes

    @property
    def distorted(self) -> int:
        """With augment_token, a distorted training image starts with its own token, its class
        token + distorted (null_class + distorted for no label). Sampling uses the clean ones."""
        return self.num_classes + 1


class KVCache:
    """One layer's keys and values, preallocated for the whole sequence.

    Writing into a fixed buffer avoids re-concatenating the prefix at every step,
    which costs O(T^2) copies and dominated generation at n=10000.
    """

    def __init__(self, length: int):
        self.k = self.v = None
        self.size, self.length = length, 0

    def append(self, k: torch.Tensor, v: torch.Tensor):
        if self.k is None:
            B, nh, _, hs = k.shape
            self.k, self.v = k.new_empty(B, nh, self.size, hs), v.new_empty(B, nh, self.size, hs)
        start, end = self.length, self.length + k.shape[2]
        self.k[:, :, start:end], self.v[:, :, start:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def rotary_angles(shape: PriorShape) -> torch.Tensor:
    """(seq_len, head_dim / 2) rotation angles. Input position p holds the code of cell p - 1
    (the class token sits just before cell 0), so 2d rotates half of each head by that
    cell's row and half by its column: attention then sees grid offsets, not sequence gaps."""
    half = shape.n_embd // shape.n_head // 2
    position = torch.arange(shape.seq_len, dtype=torch.float64)
    if shape.rope == "1d":
        coords, freqs = position[:, None], 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
        return (coords * freqs).float()
    row, col = torch.div(position - 1, shape.grid, rounding_mode="floor"), (position - 1) % shape.grid
    quarter = half // 2
    freqs = 100.0 ** (-torch.arange(half - quarter, dtype=torch.float64) / max(1, half - quarter))
    return torch.cat([row[:, None] * freqs[:quarter], col[:, None] * freqs], 1).float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim by the given angles."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


def make_norm(shape: PriorShape, width: int) -> nn.Module:
    return nn.RMSNorm(width) if shape.norm == "rms" else nn.LayerNorm(width)


class SelfAttention(nn.Module):
    def __init__(self, shape: PriorShape):
        super().__init__()
        self.n_head = shape.n_head
        self.qkv = nn.Linear(shape.n_embd, 3 * shape.n_embd)
        self.proj = nn.Linear(shape.n_embd, shape.n_embd)
        # Dropout on the residual branch, not on the attention weights: SDPA with
        # dropout_p > 0 falls back to a slower kernel on CPU.
        self.drop = nn.Dropout(shape.dropout)
        head_dim = shape.n_embd // shape.n_head
        self.q_norm = nn.RMSNorm(head_dim) if shape.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if shape.qk_norm else nn.Identity()
        self.rotary = shape.rope != "none"
        if self.rotary:   # buffers, not parameters: rebuilt from the shape, never saved
            angles = rotary_angles(shape)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, cache: KVCache | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            start = cache.length if cache is not None else 0
            cos, sin = self.cos[start:start + T], self.sin[start:start + T]
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:   # attend over the cached prefix plus this step
            k, v = cache.append(k, v)
        # With a cache, the new query sees the whole prefix, so no mask is needed
        # unless several new tokens arrive at once (the prefill).
        causal = cache is None or T > 1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class ReLUSquared(nn.Module):
    def forward(self, x):
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """silu(x W_gate) * (x W_up): one linear layer makes both halves."""
    def forward(self, x):
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


def make_mlp(shape: PriorShape) -> nn.Sequential:
    width = shape.n_embd
    if shape.activation == "swiglu":   # 2/3 of 4x wide, so the parameters match the others' MLP
        hidden = 8 * ((8 * width // 3 + 7) // 8)
        return nn.Sequential(nn.Linear(width, 2 * hidden), SwiGLU(), nn.Linear(hidden, width), nn.Dropout(shape.dropout))
    activation = {"relu": nn.ReLU, "relu2": ReLUSquared, "gelu": nn.GELU}[shape.activation]()
    return nn.Sequential(nn.Linear(width, 4 * width), activation, nn.Linear(4 * width, width), nn.Dropout(shape.dropout))


class Block(nn.Module):
    def __init__(self, shape: PriorShape):
        super().__init__()
        self.ln1 = make_norm(shape, shape.n_embd)
        self.attn = SelfAttention(shape)
        self.ln2 = make_norm(shape, shape.n_embd)
        self.mlp = make_mlp(shape)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module, Pretrained):
    """GPT.from_pretrained(folder or shipped name) / save_pretrained(folder): common/hub.py."""
    stage, shape_class = "prior", PriorShape
    what = "a causal Transformer over code grids in raster order, optionally for a class"

    @classmethod
    def load_run(cls, location, device):
        from prior import load_prior   # the package imports this module
        return load_prior(location, device)[0]

    def __init__(self, shape: PriorShape):
        super().__init__()
        assert shape.num_codes >= 2 and shape.grid >= 1, "num_codes and grid come from the tokenizer: set them"
        self.shape = shape
        self.tok_emb = nn.Embedding(shape.num_codes, shape.n_embd)
        # classes + the null class, and again for distorted images with augment_token
        self.cond_emb = nn.Embedding(shape.distorted * (2 if shape.augment_token else 1), shape.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, shape.seq_len, shape.n_embd))
        if shape.rowcol_pos:   # input position p predicts the code at cell (p // grid, p % grid)
            self.row_emb = nn.Parameter(torch.zeros(shape.grid, shape.n_embd))
            self.col_emb = nn.Parameter(torch.zeros(shape.grid, shape.n_embd))
        self.blocks = nn.ModuleList([Block(shape) for _ in range(shape.n_layer)])
        self.ln_f = make_norm(shape, shape.n_embd)
        self.head = nn.Linear(shape.n_embd, shape.num_codes, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        if shape.rowcol_pos:
            nn.init.normal_(self.row_emb, std=0.02)
            nn.init.normal_(self.col_emb, std=0.02)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, then scores for the num_codes codes (the mask token is never predicted)."""
        return self.head(self.ln_f(x))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _embed(self, labels, codes, start: int):
        """Inputs for positions start..: the class token at 0, then codes shifted by one."""
        parts = []
        if start == 0:
            parts.append(self.cond_emb(labels)[:, None])                # (B, 1, C)
        if codes is not None and codes.shape[1] > 0:
            parts.append(self.tok_emb(codes))                           # (B, t, C)
        x = torch.cat(parts, 1)
        pos = self.pos_emb[:, start:start + x.shape[1]]
        if self.shape.rowcol_pos:
            cells = torch.arange(start, start + x.shape[1], device=x.device)
            pos = pos + self.row_emb[cells // self.shape.grid] + self.col_emb[cells % self.shape.grid]
        return x + pos

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None):
        """codes: (B, T) long, T = grid**2 (MNIST 49); labels: (B,) long in 0..num_classes
        (more with augment_token) -> (logits (B, T, V), loss or None)."""
        x = self._embed(labels, codes[:, :-1], start=0)                        # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.logits(x)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def log_likelihood(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log p(codes | label), summed over the codes: (B,) in nats.
        Unguided: it asks how likely the prior finds a grid, not how far guidance pushed it."""
        logits, _ = self(codes, labels)
        return logits.float().log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1).sum(1)

    @torch.no_grad()
    def next_logits(self, labels, prefix: torch.Tensor, caches: list | None):
        """Logits for the token after `prefix` (B, t). With caches, only new tokens are run."""
        if caches is None:   # recompute the whole prefix (the reference the cache must match)
            x = self._embed(labels, prefix, start=0)
            for block in self.blocks:
                x = block(x)
        else:
            if caches[0].length == 0:   # first call: prefill class token + any given prefix
                x = self._embed(labels, prefix, start=0)
            else:
                x = self._embed(labels, prefix[:, -1:], start=prefix.shape[1])
            for block, cache in zip(self.blocks, caches):
                x = block(x, cache)
        return self.logits(x[:, -1]).float()                    # (B, V)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg: float = 0.0, prefix: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 cfg_schedule: str = "constant") -> torch.Tensor:
        """Sample (B, T) codes. labels: (B,) in 0..num_classes; prefix: (B, t) codes to keep.

        cfg_schedule: "constant" guides every token by cfg; "linear" ramps the scale
        from 0 at the first code to 2 * cfg at the last (the same mean).
        """
        B = labels.shape[0]
        device = labels.device
        tokens = prefix if prefix is not None else torch.empty(B, 0, dtype=torch.long, device=device)
        guided = cfg != 0.0
        if guided:  # one batch: conditional rows, then the same rows unconditioned
            labels = torch.cat([labels, torch.full_like(labels, self.shape.null_class)])
        caches = [KVCache(self.shape.seq_len) for _ in self.blocks] if use_cache else None
        while tokens.shape[1] < self.shape.seq_len:
            logits = self.next_logits(labels, torch.cat([tokens, tokens]) if guided else tokens, caches)
            if guided:
                cond, uncond = logits.chunk(2)
                logits = cond + guidance_scale(cfg, cfg_schedule, tokens.shape[1], self.shape.seq_len) * (cond - uncond)
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
        return tokens


CFG_SCHEDULES = ("constant", "linear")


def guidance_scale(cfg: float, schedule: str, position: int, length: int) -> float:
    """The guidance scale for the code at `position` (0..length-1) under a schedule."""
    if schedule == "constant":
        return cfg
    if schedule == "linear":
        return cfg * 2 * position / (length - 1)
    raise ValueError(f"cfg_schedule={schedule!r}: expected one of {', '.join(CFG_SCHEDULES)}")


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """One token per row from logits (B, V) with temperature, top-k and nucleus filtering."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already cover top_p (keep at least one).
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF sampling: one uniform per row instead of torch.multinomial's one
    # random number per vocabulary entry (a fifth of generation on CPU; docs/EXPERIMENTS.md).
    # float64 so the last bin's cumulative sum is exact enough to never skip a token.
    # The uniforms come from the generator's device (a CPU one gives the same draws on any device).
    cdf = logits.double().softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype,
                   device=generator.device if generator is not None else cdf.device).to(cdf.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[1] - 1).squeeze(1)
