"""Bicubic ×s downscaling with optional Gaussian blur before and Gaussian noise after."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.degradation.base import Degradation, DegradationRecord
from datamodules.degradation.filters import filter_per_sample, gaussian_kernels


class BicubicDegradation(Degradation):
    """``lq = clamp(bicubic_down(blur_σ(hq)) + n)``, σ ~ U(blur_sigma), n ~ N(0, noise_std²).

    With both ranges at 0 this is plain bicubic downscaling (the classical SR setting).
    """

    def __init__(
        self,
        scale: int = 4,
        blur_sigma: tuple[float, float] = (0.0, 0.0),
        blur_kernel_size: int = 7,
        noise_std: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__(scale)
        if blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd, got {blur_kernel_size}")
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.noise_std = (float(noise_std[0]), float(noise_std[1]))
        self.blur_kernel_size = int(blur_kernel_size)

    @staticmethod
    def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=generator.device)
        return lo + (hi - lo) * u

    def sample(self, batch_size: int, generator: torch.Generator) -> DegradationRecord:
        params = {
            "blur_sigma": self._uniform(*self.blur_sigma, batch_size, generator),
            "noise_std": self._uniform(*self.noise_std, batch_size, generator),
            # The noise itself is drawn from a per-sample seed so applying a record is deterministic.
            "noise_seed": torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=generator.device),
        }
        return DegradationRecord(batch_size=batch_size, params=params)

    def apply(self, hq: torch.Tensor, record: DegradationRecord) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = hq.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"HQ size {h}x{w} is not divisible by the scale {self.scale}")
        x = hq
        sigma = record.params["blur_sigma"].to(hq.device)
        if bool((sigma > 0).any()):
            kernels = gaussian_kernels(sigma, self.blur_kernel_size)
            identity = torch.zeros_like(kernels)
            identity[:, self.blur_kernel_size // 2, self.blur_kernel_size // 2] = 1.0
            kernels = torch.where((sigma > 0)[:, None, None], kernels, identity)
            x = filter_per_sample(x, kernels)
        lq = F.interpolate(x, size=(h // self.scale, w // self.scale), mode="bicubic", align_corners=False, antialias=True)
        std = record.params["noise_std"].to(hq.device)
        if bool((std > 0).any()):
            noise = torch.stack(
                [
                    torch.randn(lq.shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=lq.dtype)
                    for s in record.params["noise_seed"].tolist()
                ]
            ).to(lq.device)
            lq = lq + noise * std.to(lq.dtype)[:, None, None, None]
        return lq.clamp(0.0, 1.0), hq
