"""Real-ESRGAN's high-order degradation model, configured by one list of stages.

Real-ESRGAN (Wang et al., ICCVW 2021) synthesises LQ images by running a classical
degradation — blur, resize, noise, JPEG — twice, then resizing to the LQ size with a final 2-D
sinc filter and JPEG in random order. Here each round is one entry of ``stages``; an entry names
the ops it contains and, optionally, the orders they may run in::

    stages:
      - name: first                     # blur → resize (relative to the current size) → noise → JPEG
        blur: {kernel_list: [...], kernel_prob: [...], sigma: [0.2, 3.0], sinc_prob: 0.1, ...}
        resize: {prob: [0.2, 0.7, 0.1], range: [0.15, 1.5]}
        noise: {gaussian_prob: 0.5, gaussian_sigma: [1, 30], poisson_scale: [0.05, 3.0], gray_prob: 0.4}
        jpeg: {quality: [30, 95]}
      - name: second                    # the resize is relative to the final LQ size
        blur: {prob: 0.8, sigma: [0.2, 1.5], ...}
        resize: {prob: [0.3, 0.4, 0.3], range: [0.3, 1.2], relative_to: output}
        noise: {...}
      - name: final                     # resize to HQ/scale, sinc, JPEG; two orders, 50/50
        resize: {relative_to: output}
        blur: {prob: 0.8, sinc_prob: 1.0, sinc_cutoff: [0.333, 1.0]}
        jpeg: {quality: [30, 95]}
        orders: [[resize, blur, jpeg], [jpeg, resize, blur]]

Every random choice is drawn per sample in :meth:`RealESRGANDegradation.sample` (the reference
draws resize, noise type and order once per batch and mixes batches through a pair pool).
:meth:`RealESRGANDegradation.apply` runs the whole batch at once: samples keep their own sizes
inside one padded canvas (:mod:`datamodules.degradation.ragged`), filtering is one grouped
convolution, and only JPEG, noise generation and resizing touch samples one by one.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from datamodules.degradation.base import Degradation, DegradationRecord
from datamodules.degradation.filters import (
    anisotropic_gaussian_kernels,
    filter_per_sample,
    generalized_gaussian_kernels,
    plateau_kernels,
    pulse_kernels,
    sinc_kernels,
    usm_sharpen,
)
from datamodules.degradation.jpeg import BACKENDS as JPEG_BACKENDS
from datamodules.degradation.jpeg import jpeg_ragged
from datamodules.degradation.noise import add_noise
from datamodules.degradation.ragged import Ragged, interpolate_output_size, resize_ragged
from lit_sr.errors import ConfigError, FieldError
from lit_sr.typed import typed

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
OPS = ("blur", "resize", "noise", "jpeg")
_SEED_HIGH = 2**31 - 1


# --------------------------------------------------------------------------------------------
# Config specs: typed nodes (OmegaConf checks keys and types, __post_init__ the values)
# --------------------------------------------------------------------------------------------


def _range(name: str, value: Sequence[float], low: float | None = None, high: float | None = None) -> tuple[float, float]:
    if len(value) != 2:
        raise FieldError(name, f"must be a [low, high] pair, got {list(value)!r}")
    lo, hi = float(value[0]), float(value[1])
    if not lo <= hi:
        raise FieldError(name, f"must have low <= high, got {list(value)!r}")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise FieldError(name, f"must lie in [{low}, {high}], got {list(value)!r}")
    return lo, hi


def _probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise FieldError(name, f"must be a probability in [0, 1], got {value!r}")
    return float(value)


def _distribution(name: str, value: Sequence[float], length: int | None = None) -> tuple[float, ...]:
    probs = tuple(float(v) for v in value)
    if length is not None and len(probs) != length:
        raise FieldError(name, f"must have {length} entries, got {len(probs)}")
    if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise FieldError(name, f"must be non-negative and sum to 1, got {list(value)!r}")
    return probs


def _choices(name: str, value: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise FieldError(name, f"has unknown value(s) {unknown}; allowed: {list(allowed)}")
    return tuple(value)


@dataclass
class BlurSpec:
    """Random blur kernel. Defaults are Real-ESRGAN's first-stage kernel settings.

    ``sinc_cutoff``/``sinc_cutoff_small`` are ω_c/π for kernel sizes ≥ 13 / < 13 (small sinc
    kernels get a higher minimum cutoff so they stay valid low-pass filters).
    """

    prob: float = 1.0
    kernel_list: list[str] = field(default_factory=lambda: list(KERNEL_KINDS))
    kernel_prob: list[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sigma: list[float] = field(default_factory=lambda: [0.2, 3.0])
    betag: list[float] = field(default_factory=lambda: [0.5, 4.0])
    betap: list[float] = field(default_factory=lambda: [1.0, 2.0])
    sinc_prob: float = 0.1
    sinc_cutoff: list[float] = field(default_factory=lambda: [0.2, 1.0])
    sinc_cutoff_small: Optional[list[float]] = field(default_factory=lambda: [1.0 / 3.0, 1.0])
    sizes: list[int] = field(default_factory=lambda: [7, 9, 11, 13, 15, 17, 19, 21])

    def __post_init__(self) -> None:
        self.prob = _probability("prob", self.prob)
        self.kernel_list = _choices("kernel_list", self.kernel_list, KERNEL_KINDS)
        self.kernel_prob = _distribution("kernel_prob", self.kernel_prob, len(self.kernel_list)) if self.kernel_list else ()
        self.sinc_prob = _probability("sinc_prob", self.sinc_prob)
        if not self.kernel_list and self.sinc_prob < 1.0:
            raise FieldError("kernel_list", "is empty, so sinc_prob must be 1")
        if not self.sizes or any(s < 1 or s % 2 == 0 for s in self.sizes):
            raise FieldError("sizes", f"must be positive odd kernel sizes, got {list(self.sizes)!r}")
        self.sizes = tuple(int(s) for s in self.sizes)
        self.sinc_cutoff = _range("sinc_cutoff", self.sinc_cutoff, 0.0, 1.0)
        if self.sinc_cutoff[0] <= 0:
            raise FieldError("sinc_cutoff", f"must be > 0 (ω_c/π), got {list(self.sinc_cutoff)!r}")
        small = self.sinc_cutoff if self.sinc_cutoff_small is None else _range("sinc_cutoff_small", self.sinc_cutoff_small, 0.0, 1.0)
        if small[0] <= 0:
            raise FieldError("sinc_cutoff_small", f"must be > 0 (ω_c/π), got {list(small)!r}")
        self.sinc_cutoff_small = small
        self.sigma = _range("sigma", self.sigma, 0.0)
        if self.sigma[0] <= 0 and self.kernel_list:
            raise FieldError("sigma", f"must be > 0, got {list(self.sigma)!r}")
        self.betag, self.betap = _range("betag", self.betag, 0.0), _range("betap", self.betap, 0.0)
        if self.betag[0] <= 0 or self.betap[0] <= 0:
            raise FieldError("betag", "and betap must be > 0")


@dataclass
class ResizeSpec:
    """Random rescale: direction up/down/keep with ``prob``, factor in ``[1, range[1]]`` / ``[range[0], 1]``.

    ``relative_to: input`` scales the current image (``F.interpolate(scale_factor=s)``);
    ``output`` resizes to ``s ×`` the final LQ size (HQ size / scale), so with the default
    keep-only ``prob`` it lands exactly on the LQ size.
    """

    prob: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    modes: list[str] = field(default_factory=lambda: list(RESIZE_MODES))
    relative_to: str = "input"

    def __post_init__(self) -> None:
        self.prob = _distribution("prob", self.prob, 3)
        lo, hi = _range("range", self.range)
        if not 0 < lo <= 1.0 <= hi:
            raise FieldError("range", f"must satisfy 0 < low <= 1 <= high, got {list(self.range)!r}")
        self.range = (lo, hi)
        self.modes = _choices("modes", self.modes, RESIZE_MODES)
        if not self.modes:
            raise FieldError("modes", "must not be empty")
        if self.relative_to not in ("input", "output"):
            raise FieldError("relative_to", f"must be 'input' or 'output', got {self.relative_to!r}")


@dataclass
class NoiseSpec:
    """Gaussian noise (σ on the 0–255 scale) with ``gaussian_prob``, else Poisson noise; gray with ``gray_prob``."""

    gaussian_prob: float = 0.5
    gaussian_sigma: list[float] = field(default_factory=lambda: [1.0, 30.0])
    poisson_scale: list[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_prob: float = 0.4

    def __post_init__(self) -> None:
        self.gaussian_prob = _probability("gaussian_prob", self.gaussian_prob)
        self.gaussian_sigma = _range("gaussian_sigma", self.gaussian_sigma, 0.0)
        self.poisson_scale = _range("poisson_scale", self.poisson_scale, 0.0)
        self.gray_prob = _probability("gray_prob", self.gray_prob)


@dataclass
class JpegSpec:
    """JPEG quality drawn uniformly from ``quality`` (rounded to an integer when encoding)."""

    quality: list[float] = field(default_factory=lambda: [30.0, 95.0])

    def __post_init__(self) -> None:
        self.quality = _range("quality", self.quality, 1.0, 100.0)


@dataclass
class StageSpec:
    """One degradation round: its ops, the probability it runs at all, and the orders it may use."""

    name: str = MISSING
    prob: float = 1.0
    blur: Optional[BlurSpec] = None
    resize: Optional[ResizeSpec] = None
    noise: Optional[NoiseSpec] = None
    jpeg: Optional[JpegSpec] = None
    orders: Optional[list[list[str]]] = None
    order_prob: Optional[list[float]] = None

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(op for op in OPS if getattr(self, op) is not None)

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise FieldError("name", f"must be a non-empty string without '.', got {self.name!r}")
        ops = self.ops
        self.orders = tuple(tuple(order) for order in self.orders) if self.orders else (ops,)
        for order in self.orders:
            if sorted(order) != sorted(ops):
                raise FieldError("orders", f"has {list(order)}, but must list each of the stage's ops {list(ops)} once")
        self.order_prob = (_distribution("order_prob", self.order_prob, len(self.orders)) if self.order_prob is not None
                           else tuple(1.0 / len(self.orders) for _ in self.orders))
        self.prob = _probability("prob", self.prob)


def parse_stages(stages: Any) -> tuple[StageSpec, ...]:
    """Typed stages from a ``stages`` config list (plain or OmegaConf); one-line errors name the key."""
    if not stages:
        raise ConfigError("stages must be a non-empty list of stage mappings")
    specs = tuple(typed(StageSpec, node, f"stages[{i}]") for i, node in enumerate(stages))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    last = specs[-1]
    if (last.resize is None or last.resize.relative_to != "output" or last.resize.prob != (0.0, 0.0, 1.0)
            or last.prob != 1.0):
        raise ConfigError(
            f"stages[{len(specs) - 1}] ({last.name!r}) must always run and end at the LQ size: "
            "give it prob 1 and resize: {relative_to: output, prob: [0, 0, 1]}"
        )
    return specs


# --------------------------------------------------------------------------------------------
# Sampling helpers (everything from the passed generator; results on CPU)
# --------------------------------------------------------------------------------------------


def _rand(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).cpu()


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * _rand(gen, n)


def _categorical(gen: torch.Generator, n: int, probs: Sequence[float]) -> torch.Tensor:
    """Indices drawn with ``probs``; zero-probability entries are never returned."""
    p = torch.tensor(probs, dtype=torch.float64)
    cum = torch.cumsum(p, 0) / p.sum()
    last = int(torch.nonzero(p > 0).max())
    cum[last:] = 1.0
    return torch.searchsorted(cum, _rand(gen, n).to(torch.float64), right=True).clamp_max(len(probs) - 1)


def _sample_blur(spec: BlurSpec, gen: torch.Generator, n: int, prefix: str) -> dict[str, Any]:
    sizes = torch.tensor(spec.sizes)[torch.randint(len(spec.sizes), (n,), generator=gen, device=gen.device).cpu()]
    applied = _rand(gen, n) < spec.prob
    is_sinc = _rand(gen, n) < spec.sinc_prob
    kind_idx = _categorical(gen, n, spec.kernel_prob) if spec.kernel_list else torch.zeros(n, dtype=torch.long)
    sigma_x = _uniform(gen, n, *spec.sigma)
    sigma_y = _uniform(gen, n, *spec.sigma)
    theta = _uniform(gen, n, -math.pi, math.pi)
    # BasicSR draws β below or above 1 with equal probability (assumes low <= 1 <= high).
    below_one = _rand(gen, n) < 0.5
    u_g, u_p = _rand(gen, n), _rand(gen, n)

    def beta(lo: float, hi: float, u: torch.Tensor) -> torch.Tensor:
        below = min(lo, 1.0) + (min(hi, 1.0) - min(lo, 1.0)) * u
        above = max(lo, 1.0) + (max(hi, 1.0) - max(lo, 1.0)) * u
        return torch.where(below_one, below, above)

    beta_g, beta_p = beta(*spec.betag, u_g), beta(*spec.betap, u_p)
    u_c = _rand(gen, n)
    small = spec.sinc_cutoff_small or spec.sinc_cutoff
    cut_small = (small[0] + (small[1] - small[0]) * u_c) * math.pi
    cut_large = (spec.sinc_cutoff[0] + (spec.sinc_cutoff[1] - spec.sinc_cutoff[0]) * u_c) * math.pi
    cutoff = torch.where(sizes < 13, cut_small, cut_large)

    kinds: list[str] = []
    for i in range(n):
        if not applied[i]:
            kinds.append("pulse")
        elif is_sinc[i] or not spec.kernel_list:
            kinds.append("sinc")
        else:
            kinds.append(spec.kernel_list[int(kind_idx[i])])
    gaussian_like = torch.tensor([k not in ("sinc", "pulse") for k in kinds])
    iso = torch.tensor([k in ("iso", "generalized_iso", "plateau_iso") for k in kinds])
    zeros = torch.zeros(n)
    sigma_x = torch.where(gaussian_like, sigma_x, zeros)
    sigma_y = torch.where(gaussian_like, torch.where(iso, sigma_x, sigma_y), zeros)
    theta = torch.where(gaussian_like & ~iso, theta, zeros)
    beta_out = torch.ones(n)
    beta_out = torch.where(torch.tensor([k.startswith("generalized") for k in kinds]), beta_g, beta_out)
    beta_out = torch.where(torch.tensor([k.startswith("plateau") for k in kinds]), beta_p, beta_out)
    cutoff = torch.where(torch.tensor([k == "sinc" for k in kinds]), cutoff, zeros)
    return {
        f"{prefix}kind": kinds,
        f"{prefix}size": sizes.to(torch.int64),
        f"{prefix}sigma_x": sigma_x.float(),
        f"{prefix}sigma_y": sigma_y.float(),
        f"{prefix}theta": theta.float(),
        f"{prefix}beta": beta_out.float(),
        f"{prefix}cutoff": cutoff.float(),
    }


# Kernel kind → the formula that builds it (isotropic kinds are the anisotropic formula with σx = σy).
_FAMILY = {
    "iso": "gaussian", "aniso": "gaussian", "generalized_iso": "generalized", "generalized_aniso": "generalized",
    "plateau_iso": "plateau", "plateau_aniso": "plateau", "sinc": "sinc",
}


def build_kernels(
    kinds: Sequence[str],
    size: Sequence[int],
    sigma_x: Sequence[float],
    sigma_y: Sequence[float],
    theta: Sequence[float],
    beta: Sequence[float],
    cutoff: Sequence[float],
    pad_to: int,
) -> torch.Tensor:
    """Per-sample kernels (B, pad_to, pad_to) from record values; each family is computed for its samples only."""
    out = pulse_kernels(len(kinds), pad_to)
    families: dict[str, list[int]] = defaultdict(list)
    for i, kind in enumerate(kinds):
        if kind != "pulse":
            if kind not in _FAMILY:
                raise ValueError(f"unknown blur kernel kind {kind!r}")
            families[_FAMILY[kind]].append(i)
    for family, index in families.items():

        def pick(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor([float(values[i]) for i in index], dtype=torch.float64)

        ksize = torch.tensor([int(size[i]) for i in index])
        if family == "gaussian":
            kernel = anisotropic_gaussian_kernels(pick(sigma_x), pick(sigma_y), pick(theta), pad_to, ksize)
        elif family == "generalized":
            kernel = generalized_gaussian_kernels(pick(sigma_x), pick(sigma_y), pick(theta), pick(beta), pad_to, ksize)
        elif family == "plateau":
            kernel = plateau_kernels(pick(sigma_x), pick(sigma_y), pick(theta), pick(beta), pad_to, ksize)
        else:
            kernel = sinc_kernels(pick(cutoff), pad_to, ksize)
        out[torch.tensor(index)] = kernel
    return out


# --------------------------------------------------------------------------------------------
# Record access: values may be tensors (fresh record) or plain lists (record rebuilt from JSON)
# --------------------------------------------------------------------------------------------


def _column(params: Mapping[str, Any], key: str) -> list[Any]:
    if key not in params:
        raise KeyError(f"degradation record has no {key!r}: it was sampled with a different configuration")
    value = params[key]
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


def _take(params: Mapping[str, Any], index: Sequence[int]) -> dict[str, list[Any]]:
    return {k: [v[i] for i in index] for k, v in params.items()}


@dataclass
class _Sizes:
    hq: tuple[int, int]
    lq: tuple[int, int]
    scale: int


class RealESRGANDegradation(Degradation):
    """High-order degradation (Real-ESRGAN) as a list of stages; see the module docstring for the config.

    Args:
        stages: list of stage mappings (``name`` plus any of ``blur``/``resize``/``noise``/``jpeg``,
            ``prob``, ``orders``, ``order_prob``). The last stage must resize to the LQ size.
        scale: HQ size / LQ size (the HQ batch must be divisible by it).
        usm_target: unsharp-mask the HQ first (Real-ESRNet's ``gt_usm``); the sharpened image is
            both the training target and the input of the degradation.
        usm_radius, usm_weight, usm_threshold: USM settings (BasicSR ``USMSharp``: 50, 0.5, 10).
        clean_prob: probability that a sample skips all stages and its LQ is a plain
            antialiased bicubic downscale of the target (S3Diff's ``no_degradation_prob``).
        round_output: quantise the LQ to 8-bit levels as Real-ESRGAN does (else only clip).
        jpeg_backend: ``auto`` (libjpeg on CPU, the tensor codec on a GPU: ``degrade_on=device``),
            ``pil`` or ``tensor`` (:mod:`datamodules.degradation.jpeg`).
    """

    def __init__(
        self,
        stages: list[StageSpec],
        scale: int = 4,
        usm_target: bool = False,
        usm_radius: int = 50,
        usm_weight: float = 0.5,
        usm_threshold: float = 10.0,
        clean_prob: float = 0.0,
        round_output: bool = True,
        jpeg_backend: str = "auto",
    ) -> None:
        super().__init__(scale)
        if jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f"jpeg_backend must be one of {', '.join(JPEG_BACKENDS)}, got {jpeg_backend!r}")
        self.jpeg_backend = jpeg_backend
        self.stages = parse_stages(stages)
        self.usm_target = bool(usm_target)
        if int(usm_radius) < 1:
            raise ValueError(f"usm_radius must be >= 1, got {usm_radius}")
        self.usm_radius = int(usm_radius)
        self.usm_weight = float(usm_weight)
        self.usm_threshold = float(usm_threshold)
        if not 0.0 <= clean_prob <= 1.0:
            raise ValueError(f"clean_prob must be a probability in [0, 1], got {clean_prob!r}")
        self.clean_prob = float(clean_prob)
        self.round_output = bool(round_output)

    # ----------------------------------------------------------------------------- sampling

    def sample(self, batch_size: int, generator: torch.Generator) -> DegradationRecord:
        n = int(batch_size)
        params: dict[str, Any] = {"clean": _rand(generator, n) < self.clean_prob}
        for stage in self.stages:
            pre = f"{stage.name}."
            params[pre + "apply"] = _rand(generator, n) < stage.prob
            params[pre + "order"] = _categorical(generator, n, stage.order_prob or (1.0,))
            if stage.blur is not None:
                params.update(_sample_blur(stage.blur, generator, n, pre + "blur."))
            if stage.resize is not None:
                spec = stage.resize
                direction = _categorical(generator, n, spec.prob)
                up = _uniform(generator, n, 1.0, spec.range[1])
                down = _uniform(generator, n, spec.range[0], 1.0)
                factor = torch.where(direction == 0, up, torch.where(direction == 1, down, torch.ones(n)))
                params[pre + "resize.scale"] = factor.float()
                params[pre + "resize.mode"] = [spec.modes[int(i)] for i in _categorical(generator, n, [1 / len(spec.modes)] * len(spec.modes))]
            if stage.noise is not None:
                spec_n = stage.noise
                gaussian = _rand(generator, n) < spec_n.gaussian_prob
                sigma = _uniform(generator, n, *spec_n.gaussian_sigma)
                poisson = _uniform(generator, n, *spec_n.poisson_scale)
                params[pre + "noise.kind"] = ["gaussian" if g else "poisson" for g in gaussian.tolist()]
                params[pre + "noise.level"] = torch.where(gaussian, sigma, poisson).float()
                params[pre + "noise.gray"] = _rand(generator, n) < spec_n.gray_prob
                params[pre + "noise.seed"] = torch.randint(0, _SEED_HIGH, (n,), generator=generator, device=generator.device).cpu()
            if stage.jpeg is not None:
                params[pre + "jpeg.quality"] = _uniform(generator, n, *stage.jpeg.quality).float()
        return DegradationRecord(batch_size=n, params=params)

    # ----------------------------------------------------------------------------- applying

    def apply(self, hq: torch.Tensor, record: DegradationRecord) -> tuple[torch.Tensor, torch.Tensor]:
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"RealESRGANDegradation expects an RGB batch (B, 3, H, W), got {tuple(hq.shape)}")
        b, _, h, w = hq.shape
        if record.batch_size != b:
            raise ValueError(f"record is for {record.batch_size} samples but the HQ batch has {b}")
        if h % self.scale or w % self.scale:
            raise ValueError(f"HQ size {h}x{w} is not divisible by the scale {self.scale}")
        sizes = _Sizes(hq=(h, w), lq=(h // self.scale, w // self.scale), scale=self.scale)
        x = hq.float()
        target = usm_sharpen(x, self.usm_radius, self.usm_weight, self.usm_threshold) if self.usm_target else x
        params = {k: _column(record.params, k) for k in record.params}
        clean = [bool(c) for c in _column(params, "clean")]
        lq = x.new_empty(b, 3, *sizes.lq)
        work = [i for i in range(b) if not clean[i]]
        if work:
            state = Ragged.uniform(target if len(work) == b else target[work])
            work_params = params if len(work) == b else _take(params, work)
            for stage in self.stages:
                state = self._run_stage(stage, state, work_params, sizes)
            if not state.is_uniform or tuple(state.data.shape[-2:]) != sizes.lq:
                raise RuntimeError(f"stages ended at sizes {set(state.sizes)}, expected {sizes.lq}")
            lq[work] = state.data
        easy = [i for i in range(b) if clean[i]]
        if easy:
            lq[easy] = F.interpolate(target[easy], size=sizes.lq, mode="bicubic", align_corners=False, antialias=True)
        lq = torch.clamp((lq * 255.0).round(), 0, 255) / 255.0 if self.round_output else lq.clamp(0.0, 1.0)
        return lq.to(hq.dtype), target.to(hq.dtype)

    def _run_stage(self, stage: StageSpec, state: Ragged, params: dict[str, list[Any]], sizes: _Sizes) -> Ragged:
        pre = f"{stage.name}."
        applied = _column(params, pre + "apply")
        order = _column(params, pre + "order")
        groups: dict[int, list[int]] = defaultdict(list)
        for i in range(len(state)):
            groups[int(order[i]) if applied[i] else -1].append(i)
        parts, indices = [], []
        for key in sorted(groups):
            index = groups[key]
            whole = len(index) == len(state)
            sub = state if whole else state.subset(index)
            sub_params = params if whole else _take(params, index)
            if key >= 0:
                for op in stage.orders[key]:  # type: ignore[index]
                    sub = getattr(self, f"_{op}")(stage, sub, sub_params, sizes)
            parts.append(sub)
            indices.append(index)
        return Ragged.merge(parts, indices, len(state))

    def _blur(self, stage: StageSpec, x: Ragged, p: dict[str, list[Any]], sizes: _Sizes) -> Ragged:
        pre = f"{stage.name}.blur."
        kinds = _column(p, pre + "kind")
        if all(k == "pulse" for k in kinds):
            return x
        assert stage.blur is not None
        kernels = build_kernels(
            kinds, _column(p, pre + "size"), _column(p, pre + "sigma_x"), _column(p, pre + "sigma_y"),
            _column(p, pre + "theta"), _column(p, pre + "beta"), _column(p, pre + "cutoff"),
            pad_to=max(stage.blur.sizes),
        )
        data = filter_per_sample(x.data, kernels, None if x.is_uniform else x.sizes)
        return Ragged(data, x.sizes)

    def _resize(self, stage: StageSpec, x: Ragged, p: dict[str, list[Any]], sizes: _Sizes) -> Ragged:
        assert stage.resize is not None
        factors = [float(f) for f in _column(p, f"{stage.name}.resize.scale")]
        modes = _column(p, f"{stage.name}.resize.mode")
        if stage.resize.relative_to == "input":
            out = [interpolate_output_size(x.sizes[i], factors[i]) for i in range(len(x))]
            return resize_ragged(x, out, modes, factors)
        # Real-ESRGAN's second resize: int(HQ / scale * factor), so "keep" lands on the LQ size.
        (h, w), s = sizes.hq, sizes.scale
        out = [(int(h / s * f), int(w / s * f)) for f in factors]
        return resize_ragged(x, out, modes, [None] * len(x))

    def _noise(self, stage: StageSpec, x: Ragged, p: dict[str, list[Any]], sizes: _Sizes) -> Ragged:
        pre = f"{stage.name}.noise."
        return add_noise(x, _column(p, pre + "kind"), _column(p, pre + "level"), _column(p, pre + "gray"),
                         _column(p, pre + "seed"))

    def _jpeg(self, stage: StageSpec, x: Ragged, p: dict[str, list[Any]], sizes: _Sizes) -> Ragged:
        # JPEG sees clipped values, as DiffJPEG's callers clamp before compressing.
        return jpeg_ragged(x, _column(p, f"{stage.name}.jpeg.quality"), self.jpeg_backend)
