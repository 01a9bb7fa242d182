"""VQ-VAE for square images (MNIST: 28x28, one channel): Encoder -> VectorQuantizer -> Decoder.

Reference design (van den Oord et al. 2017, as commonly adapted to MNIST):
encoder C->64 (4x4/2), 64->64 (4x4/2), 64->D (3x3) maps 28x28 to a 7x7 grid of
D-dim vectors; the decoder mirrors it with transposed convs and ends in tanh, so
the model works in [-1, 1] inside while the API speaks [0, 1]. The grid is the image
side over 2**downsamples: 28 -> 7, 32 -> 8, 64 -> 8 (three halvings by default above 32).

The quantizer snaps each *spatial position's* vector to its nearest code
(`b d h w -> (b h w) d`); flattening NCHW with `.view(-1, D)` would mix the
channels of different positions. Codebook health is on by default: k-means
initialisation from the first batch, restart of codes unused for a while, and
optionally EMA updates (then the loss keeps only the commitment term).
Nothing here knows about Accelerate, files or logging; the only distributed
calls are all-reduces that keep codebook statistics identical across processes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from common.distributed import all_gather_rows, all_reduce, broadcast
from common.hub import Pretrained
from tokenizer.refiner import Refiner, refine


@dataclass
class VQVAEShape:
    """The sizes that define the network (a subset of TokenizerConfig)."""
    quantizer: Literal["vq", "fsq"] = "vq"   # vq: learnt codebook (L2 lookup); fsq: finite scalar quantization
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])   # fsq: levels per channel
    codebook_size: int = 64          # vq: K; coarse codes, an easier prior, kept sharp by the adversarial decoder
    embedding_dim: int = 16          # vq: code vector size (16: as sharp as 64, and cheaper)
    hidden_channels: int = 64        # width of the encoder and decoder convolutions
    res_blocks: int = 0              # residual blocks at 7x7 in the encoder and in the decoder
    beta: float = 0.25               # vq: weight of the commitment loss
    ema: bool = True                 # vq: codes follow EMA cluster means (sharper than gradient updates)
    ema_decay: float = 0.99          # vq with ema: decay of the running cluster statistics
    kmeans_init: bool = True         # vq: codes start as k-means centres of the first batch
    dead_code_steps: int = 50        # vq: restart a code unused for this many training steps; 0 = never
    normalize_codes: bool = False    # vq: L2-normalised lookup (cosine similarity)
    image_size: int = 0              # the input side in pixels; 0 = from the data set (MNIST: 28)
    channels: int = 0                # 1 grey, 3 colour; 0 = from the data set (MNIST: 1)
    downsamples: int = 0             # halvings from image to code grid; 0 = 2 up to 32 pixels, 3 above
                                     # (a user's set up to 28 pixels: 1, tokenizer/train.py)
    upsample: Literal["auto", "resize", "transposed"] = "auto"   # the decoder's doublings: nearest resize + 3x3
    # conv, or 4x4 transposed convs (which can leave a grid); auto: resize above 28 pixels (tokenizer/train.py)
    refiner_width: int = 0           # the refiner's width (tokenizer/refiner.py), which draws the detail a code grid
    # leaves open where the decoder paints an average; 0 = none (draw() is then decode())
    refiner_start: float = 0.5       # where on the refiner's path from noise (0) to picture (1) its steps start,
    # from start * reconstruction + (1 - start) * noise
    refiner_steps: int = 3           # the refiner's Euler steps when draw() is not told (0 = decode() alone)

    @property
    def upsampling(self) -> str:
        """The decoder's doublings ("auto" unresolved, with no data set: transposed)."""
        return "transposed" if self.upsample == "auto" else self.upsample

    @property
    def halvings(self) -> int:
        return self.downsamples or (2 if self.image_size <= 32 else 3)

    @property
    def grid(self) -> int:
        """The code grid's side: side / 2**halvings (28 -> 7)."""
        return self.image_size // 2 ** self.halvings

    @property
    def code_dim(self) -> int:
        """Channels of the latent grid: embedding_dim for vq, one per fsq level."""
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.embedding_dim

    @property
    def num_codes(self) -> int:
        """K, the vocabulary the prior sees: codebook_size, or the product of fsq_levels."""
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor      # (B, D, H, W), straight-through: gradients flow to the encoder
    indices: torch.Tensor        # (B, H, W) long
    loss: torch.Tensor           # codebook + beta * commitment (commitment only with EMA)
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


@contextlib.contextmanager
def _exact_fp32_matmul():
    """TF32 off for the matmuls inside: accelerate turns it on for CUDA under --dynamo_backend,
    and a nearest code must not depend on how the run was launched (encode() runs without it)."""
    if not torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on rows of x (N, D); empty clusters keep their seed point."""
    pick = torch.randperm(x.shape[0], generator=generator)[:k]
    if x.shape[0] < k:  # fewer vectors than codes (tiny batches): repeat with jitter
        pick = torch.randint(x.shape[0], (k,), generator=generator)
    centers = x[pick.to(x.device)].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


class VectorQuantizer(nn.Module):
    def __init__(self, shape: VQVAEShape, seed: int = 0):
        super().__init__()
        assert shape.image_size >= 8 and shape.channels in (1, 3), "image_size and channels come from the data: set them"
        self.shape = shape
        self.seed = seed
        K, D = shape.codebook_size, shape.embedding_dim
        codebook = torch.empty(K, D).uniform_(-1 / K, 1 / K)
        if shape.ema:
            # EMA codebooks are updated by running averages, not by gradients.
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(K))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("initialized", torch.tensor(not shape.kmeans_init))
        self.register_buffer("code_age", torch.zeros(K))       # training steps since last use
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self._known_initialized = False   # a host-side copy of `initialized` once it is True

    def lookup_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1) if self.shape.normalize_codes else self.codebook

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (L2) for each row of flat (N, D), in fp32."""
        codebook = self.lookup_codebook().detach().float()
        flat = flat.detach().float()
        # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2, and ||x||^2 is the same for every
        # code, so it cannot move the argmin: one fused matmul instead of three
        # passes over the (N, K) matrix.
        with _exact_fp32_matmul():
            return torch.addmm(codebook.pow(2).sum(1), flat, codebook.t(), alpha=-2).argmin(1)

    def indices(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) encoder outputs -> (N,) code indices (inference)."""
        return self.nearest(F.normalize(flat, dim=1) if self.shape.normalize_codes else flat)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) code indices -> (..., D) code vectors."""
        return F.embedding(indices, self.lookup_codebook())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        height = z.shape[-2]
        # Distances in fp32 even under bf16 autocast: argmin over near-ties is fragile.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = rearrange(z.float(), "b d h w -> (b h w) d")
            if self.shape.normalize_codes:
                flat = F.normalize(flat, dim=1)
            if self.training:
                self._maintain_codebook(flat.detach())
            indices = self.nearest(flat)
            codes = self.codes(indices)
            if self.training:   # counted by index_add_, not bincount: no wait for the device to answer
                counts = all_reduce(torch.zeros(self.shape.codebook_size, device=flat.device)
                                     .index_add_(0, indices, torch.ones_like(indices, dtype=torch.float)))
                if self.shape.ema:
                    self._ema_update(flat.detach(), indices, counts)
                self._age(counts)
            commitment_loss = F.mse_loss(flat, codes.detach())
            codebook_loss = (torch.zeros((), device=z.device) if self.shape.ema
                             else F.mse_loss(codes, flat.detach()))
            loss = codebook_loss + self.shape.beta * commitment_loss
            # Straight-through estimator: forward uses the code, backward copies the
            # gradient from the decoder input straight onto the encoder output.
            quantized = flat + (codes - flat).detach()
        quantized = rearrange(quantized, "(b h w) d -> b d h w", b=z.shape[0], h=height)
        indices = rearrange(indices, "(b h w) -> b h w", b=z.shape[0], h=height)
        return QuantizerOutput(quantized, indices, loss, codebook_loss, commitment_loss)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 7919 + int(self.train_steps))

    @torch.no_grad()
    def _maintain_codebook(self, flat: torch.Tensor) -> None:
        """k-means init on the first batch; restart codes dead for dead_code_steps steps.
        Host syncs (a GPU waits for each): one per step for the dead-code check, none else
        once initialised (the flag is read from the device once, the step only when needed)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        if not self._known_initialized:
            gen = self._generator()
            # Same rows and seed everywhere, but index_add_ on a GPU adds in any order: replicas
            # could start a few ulps apart, and with ema=false nothing would ever realign them.
            centers = broadcast(kmeans(all_gather_rows(flat), self.shape.codebook_size, iters=10, generator=gen))
            self._set_codes(torch.arange(self.shape.codebook_size, device=flat.device), centers)
            self.initialized.fill_(True)
            self._known_initialized = True
        elif self.shape.dead_code_steps > 0:
            dead = (self.code_age >= self.shape.dead_code_steps).nonzero().squeeze(1)
            if dead.numel() > 0:
                # Re-seed from this step's encoder outputs (gathered: identical on all ranks).
                candidates = all_gather_rows(flat)
                pick = torch.randint(candidates.shape[0], (dead.numel(),), generator=self._generator())
                self._set_codes(dead, candidates[pick.to(flat.device)])
        self.train_steps += 1

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        self.codebook.data[which] = vectors.to(self.codebook.dtype)
        self.code_age[which] = 0
        if self.shape.ema:
            self.ema_count[which] = 1.0
            self.ema_sum[which] = vectors.to(self.ema_sum.dtype)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        K, decay = self.shape.codebook_size, self.shape.ema_decay
        onehot_sum = all_reduce(torch.zeros(K, flat.shape[1], device=flat.device).index_add_(0, indices, flat))
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(onehot_sum, alpha=1 - decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + K * 1e-5) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _age(self, counts: torch.Tensor) -> None:
        self.code_age.add_(1).masked_fill_(counts > 0, 0)


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer et al. 2023): no codebook. Each of the len(levels) latent channels
    is bounded by tanh and rounded to one of L_i evenly spaced values; a code is the
    tuple of rounded values, its index the mixed-radix number they spell. Nothing to
    learn, nothing to die: every one of prod(levels) codes is reachable by design.
    """

    def __init__(self, levels: list[int]):
        super().__init__()
        levels_t = torch.tensor(levels)
        self.register_buffer("levels", levels_t, persistent=False)
        # index = sum_i digit_i * basis_i, digit_i in [0, L_i): basis = (1, L_0, L_0 L_1, ...)
        self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long),
                                                                levels_t[:-1]]), 0), persistent=False)

    def bound(self, flat: torch.Tensor) -> torch.Tensor:
        """Squash each channel into (-L/2, L/2) so that rounding yields exactly L values.

        For even L the range is shifted by half a step (the paper's offset), so that
        round() gives -L/2 .. L/2 - 1; eps keeps tanh's asymptote from landing on .5.
        """
        levels = self.levels.to(flat.dtype)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = (self.levels % 2 == 0).to(flat.dtype) * 0.5
        return torch.tanh(flat + torch.atanh(offset / half)) * half - offset

    def _index(self, steps: torch.Tensor) -> torch.Tensor:
        """Rounded channels (N, d), integers in [-L/2, L/2), -> (N,) mixed-radix indices."""
        return ((steps.long() + self.levels // 2) * self.basis).sum(1)

    def indices(self, flat: torch.Tensor) -> torch.Tensor:
        return self._index(self.bound(flat.float()).round())

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        return (digits - self.levels // 2).float() / (self.levels // 2)     # in [-1, 1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        height = z.shape[-2]
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = rearrange(z.float(), "b d h w -> (b h w) d")
            bounded = self.bound(flat)
            steps = bounded.detach().round()
            # Straight-through rounding: forward rounds, backward is the identity
            # (through tanh's gradient, which keeps the encoder's outputs in range).
            quantized = (bounded + (steps - bounded).detach()) / (self.levels // 2)
            indices = self._index(steps)
        zero = torch.zeros((), device=z.device)
        quantized = rearrange(quantized, "(b h w) d -> b d h w", b=z.shape[0], h=height)
        indices = rearrange(indices, "(b h w) -> b h w", b=z.shape[0], h=height)
        return QuantizerOutput(quantized, indices, zero, zero, zero)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        return x + self.block(x)


class Encoder(nn.Module):
    def __init__(self, shape: VQVAEShape):
        super().__init__()
        C, D = shape.hidden_channels, shape.code_dim
        halvings = [nn.Conv2d(shape.channels if i == 0 else C, C, 4, stride=2, padding=1)
                    for i in range(shape.halvings)]                  # 28 -> 14 -> 7
        self.net = nn.Sequential(
            *[layer for conv in halvings for layer in (conv, nn.ReLU())],
            *[ResBlock(C) for _ in range(shape.res_blocks)],
            nn.Conv2d(C, D, 3, padding=1),                          # (B, D, 7, 7)
        )

    def forward(self, x):
        return self.net(x)


def doubling(upsample: str, c_in: int, c_out: int) -> nn.Module:
    """A layer that doubles the side. "resize" repeats each pixel then convolves (every output
    pixel sees the same taps, so no grid can form: Odena et al. 2016); "transposed" is the
    classic 4x4 stride-2 transposed convolution."""
    if upsample == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1))
    return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)


class Decoder(nn.Module):
    def __init__(self, shape: VQVAEShape):
        super().__init__()
        C, D = shape.hidden_channels, shape.code_dim
        self.net = nn.Sequential(
            nn.Conv2d(D, C, 3, padding=1),
            *[ResBlock(C) for _ in range(shape.res_blocks)],
            nn.ReLU(),
            *[layer for _ in range(shape.halvings - 1) for layer in (doubling(shape.upsampling, C, C), nn.ReLU())],
            doubling(shape.upsampling, C, shape.channels), nn.Tanh(),      # the image's side, in [-1, 1]
        )

    def forward(self, z):
        return self.net(z)


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor   # (B, C, H, W) in [-1, 1]
    indices: torch.Tensor          # (B, h, w)
    loss: torch.Tensor             # total: reconstruction + quantizer terms
    recon_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VQVAE(nn.Module, Pretrained):
    """forward(x in [-1, 1]) -> VQVAEOutput; encode/decode work on [0, 1] pixels.
    VQVAE.from_pretrained(folder or shipped name) / save_pretrained(folder): common/hub.py."""
    stage, shape_class = "tokenizer", VQVAEShape
    what = "a VQ-VAE that turns a picture into a grid of codes (encode) and a grid back into a picture (decode)"

    @classmethod
    def load_run(cls, location, device):
        from tokenizer import load_tokenizer   # the package imports this module
        return load_tokenizer(location, device)

    def __init__(self, shape: VQVAEShape, seed: int = 0):
        super().__init__()
        assert shape.image_size >= 8 and shape.channels in (1, 3), "image_size and channels come from the data: set them"
        self.shape = shape
        self.encoder = Encoder(shape)
        self.quantizer = (FiniteScalarQuantizer(shape.fsq_levels) if shape.quantizer == "fsq"
                          else VectorQuantizer(shape, seed=seed))
        self.decoder = Decoder(shape)
        self.refiner = Refiner(shape.channels, shape.refiner_width) if shape.refiner_width else None
        # NHWC convolutions: faster training and encoding on CPU (docs/EXPERIMENTS.md, "Performance");
        # the (b h w) d view of z is then free.
        self.to(memory_format=torch.channels_last)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output, always in fp32: the codes chosen in training under bf16
        autocast are then the very codes encode() gives a prior (the encoder is small)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.encoder(x.float())

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        q = self.quantizer(self.latents(x))
        reconstruction = self.decoder(q.quantized)
        recon_loss = F.mse_loss(reconstruction, x)
        return VQVAEOutput(reconstruction, q.indices, recon_loss + q.loss, recon_loss,
                           q.codebook_loss, q.commitment_loss)

    @property
    def num_codes(self) -> int:
        """K, the codes a grid is made of: the prior's vocabulary."""
        return self.shape.num_codes

    codebook_size = num_codes   # the documented API's name (DESIGN.md): the same number

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it takes and gives: MNIST (1, 28, 28)."""
        return self.shape.channels, self.shape.image_size, self.shape.image_size

    @property
    def grid(self) -> int:
        """The side of its code grids: MNIST 7."""
        return self.shape.grid

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """float [B,C,H,W] in [0,1] -> long [B,h,w] code indices (MNIST: [B,1,28,28] -> [B,7,7])."""
        if not torch.is_tensor(images) or not images.is_floating_point() or images.dim() != 4 \
                or tuple(images.shape[1:]) != self.image_shape:
            got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            want = ",".join(map(str, self.image_shape))
            raise ValueError(f"encode expects a float tensor [B,{want}] in [0,1], got {got}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError(f"encode expects pixels in [0,1], got [{images.min():.3g}, {images.max():.3g}]; "
                             "divide uint8 images by 255")
        z = self.latents(images * 2 - 1)
        flat = rearrange(z, "b d h w -> (b h w) d")
        return rearrange(self.quantizer.indices(flat), "(b h w) -> b h w", b=z.shape[0], h=z.shape[-2])

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """long [B,h,w] -> float [B,C,H,W] in [0,1] (MNIST: [B,7,7] -> [B,1,28,28])."""
        K = self.num_codes
        if not torch.is_tensor(indices) or indices.is_floating_point() or indices.dim() != 3 \
                or tuple(indices.shape[1:]) != (self.grid, self.grid):
            got = tuple(indices.shape) if torch.is_tensor(indices) else type(indices).__name__
            raise ValueError(f"decode expects an integer tensor [B,{self.grid},{self.grid}] of code indices, got {got}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= K):
            raise ValueError(f"decode got code indices in [{indices.min()}, {indices.max()}], "
                             f"outside this tokenizer's codebook [0, {K - 1}]")
        out = self.decoder(self.code_vectors(indices.long()))
        return ((out.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def draw(self, indices: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """long [B,h,w] -> float [B,C,H,W] in [0,1]: one of the pictures each code grid stands for,
        drawn by the refiner in `steps` Euler steps (None: the run's refiner_steps), or decode()'s
        average where there is no refiner or steps is 0. generator: the noise's (on the CPU)."""
        steps = self.shape.refiner_steps if steps is None else steps
        if steps < 0:
            raise ValueError(f"refiner steps={steps}: must be >= 0 (0: the decoder's picture alone)")
        pictures = self.decode(indices)
        if self.refiner is None or steps == 0:
            return pictures
        drawn = refine(self.refiner, pictures * 2 - 1, steps, self.shape.refiner_start, generator)
        return ((drawn.float() + 1) / 2).clamp(0, 1)

    def code_vectors(self, indices: torch.Tensor) -> torch.Tensor:
        """long [B,h,w] -> the decoder's input (B, D, h, w): each position's code vector."""
        return rearrange(self.quantizer.codes(indices), "b h w d -> b d h w")
