"""Small image operators shared by components that read the LQ's structure (RGPA, MEM)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)  # BT.601 luma weights, as CODSR's RGPA uses
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
LAPLACE = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of an RGB batch in [0, 1]."""
    w = torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(dim=1, keepdim=True)


def filter_responses(g: torch.Tensor, laplacian: bool = False) -> torch.Tensor:
    """|Sobel_x|, |Sobel_y| (and |Laplacian|) of a (B, 1, H, W) image, replicate-padded: (B, 2 or 3, H, W)."""
    kx = torch.tensor(SOBEL_X, dtype=g.dtype, device=g.device)
    kernels = [kx, kx.t()] + ([torch.tensor(LAPLACE, dtype=g.dtype, device=g.device)] if laplacian else [])
    return F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), torch.stack(kernels)[:, None]).abs()
