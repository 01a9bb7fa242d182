"""Figures written into run directories (matplotlib, headless)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from common.checkpoint import atomic_write_bytes
from common.images import to_uint8


def _pyplot():
    """matplotlib is slow to import; only figures need it, not sample grids."""
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt
    return plt


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """[N,C,H,W] or [N,H,W] in [0,1] -> one [rows*H, nrow*W] (grey) or [rows*H, nrow*W, 3]
    (colour) tensor with 2-pixel gaps."""
    images = images.detach().float().cpu()
    images = images[:, 0] if images.dim() == 4 and images.shape[1] == 1 else images
    images = images.permute(0, 2, 3, 1) if images.dim() == 4 else images   # colour: [N,H,W,3]
    n, h, w = images.shape[:3]
    rows = (n + nrow - 1) // nrow
    grid = torch.ones(rows * (h + 2) - 2, nrow * (w + 2) - 2, *images.shape[3:])
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + 2): r * (h + 2) + h, c * (w + 2): c * (w + 2) + w] = images[i]
    return grid


def save_png(path: Path, images: torch.Tensor, nrow: int = 8, scale: int = 2) -> None:
    """A plain sample grid (white background, dark ink), without matplotlib."""
    from PIL import Image
    images = images.detach().float().cpu()
    colour = images.dim() == 4 and images.shape[1] == 3
    blanks = (-len(images)) % nrow   # fill the last row with empty cells
    images = torch.cat([images, images.new_zeros(blanks, *images.shape[1:])])
    # grey pictures print as dark ink on white; colour pictures as they are
    grid = image_grid(images, nrow) if colour else 1 - image_grid(images, nrow)
    pixels = to_uint8(grid.permute(2, 0, 1)[None] if colour else grid[None, None])[0].numpy()
    image = Image.fromarray(pixels, mode="RGB" if colour else "L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


def save_image_grid(path: Path, images: torch.Tensor, nrow: int = 8, title: str | None = None,
                    row_labels: list[str] | None = None) -> None:
    grid = image_grid(images, nrow)
    height = grid.shape[0] / grid.shape[1] * 6
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, max(1.5, height)))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    if row_labels:
        cell = images.shape[-2] + 2
        ax.set_yticks([i * cell + cell / 2 - 1 for i in range(len(row_labels))], row_labels)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


MARKERS = "os^DvP*Xh<>p"


def save_curves(path: Path, curves: dict[str, tuple[list, list]], xlabel: str = "step",
                log_y: bool = False, title: str | None = None, ylabel: str | None = None,
                legend_outside: bool = False) -> None:
    """One line per name: curves = {name: (xs, ys)}. Each line gets its own colour and
    marker (tab20 cycles, the markers with it), so many lines stay apart; legend_outside
    puts the legend right of the axes, off the data."""
    plt = _pyplot()
    many = len(curves) > 10
    fig, ax = plt.subplots(figsize=(10, 5) if legend_outside else (6, 4))
    colours = plt.get_cmap("tab20" if many else "tab10").colors
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        ax.plot(xs, ys, label=name, color=colours[i % len(colours)],
                marker=(MARKERS[i % len(MARKERS)] if many else "o") if len(xs) < 20 else None)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def save_bars(path: Path, values: torch.Tensor, xlabel: str, ylabel: str, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(values)), values.cpu().numpy(), width=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Write to a temporary name and rename, like every other file we write."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=path.suffix.lstrip("."))
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
