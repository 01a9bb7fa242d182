"""The one order in which a code grid becomes a sequence: raster (row by row)."""
from einops import rearrange
import torch


def grid_to_sequence(grid: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> [B, H*W], row by row."""
    return rearrange(grid, "b h w -> b (h w)")


def sequence_to_grid(seq: torch.Tensor, height: int) -> torch.Tensor:
    """[B, H*W] -> [B, H, W], the inverse of grid_to_sequence."""
    return rearrange(seq, "b (h w) -> b h w", h=height)
