"""Typed config: structured schemas for the nodes that are not components, and schemas derived
from the signatures of the components that are.

OmegaConf does the checking: merging a node into its schema rejects unknown keys and values of
the wrong type (with the key), and ``OmegaConf.to_object`` runs the dataclasses'
``__post_init__`` range checks. Components (``_target_`` nodes) get a schema generated from
their constructor's signature (:func:`signature_schema`), so a constructor is the single place
where its arguments are declared.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from lit_sr.errors import FieldError
from lit_sr.model.adapters import OSEDIFF_VAE_TARGETS, LoRASpec
from lit_sr.model.families.sd import UNET_CROSS_ATTENTION, UNET_TARGETS
from lit_sr.systems.stages import Stage
from lit_sr.typed import constraints_of

# ------------------------------------------------------------------------------ training root

@dataclass
class OptimConfig:
    """The generator's optimisation (loss terms with own networks configure theirs on the term)."""

    lr: float = 1e-3  # base learning rate of every trained unit (a stage may set its own)
    optimizer: Any = None  # partial node: _target_ torch.optim.AdamW, _partial_ true, weight_decay, betas
    scheduler: Any = None  # partial node building a LambdaLR (conf/scheduler); null: constant lr
    grad_clip: Optional[float] = 1.0  # gradient-norm clip (null: none)
    accumulate_grad_batches: int = 1  # optimizer step every N batches (loss of each batch / N)
    max_nonfinite_steps: int = 10  # skip a non-finite step (counted warning); stop after this many


    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FieldError("lr", f"must be a finite number > 0, got {self.lr}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise FieldError("grad_clip", f"must be a finite number > 0 or null, got {self.grad_clip}")
        if self.accumulate_grad_batches < 1:
            raise FieldError("accumulate_grad_batches", f"must be >= 1, got {self.accumulate_grad_batches}")
        if self.max_nonfinite_steps < 0:
            raise FieldError("max_nonfinite_steps", f"must be >= 0, got {self.max_nonfinite_steps}")


@dataclass
class ValConfig:
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips"])
    num_sample_images: int = 2  # validation SR images written to run_dir/samples
    bicubic_baseline: bool = True  # log val/<psnr|ssim>_bicubic and val/<psnr|ssim>_margin beside the model

    def __post_init__(self) -> None:
        from lit_sr.metrics.suite import METRIC_NAMES

        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise FieldError("metrics", f"names unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
        if self.num_sample_images < 0:
            raise FieldError("num_sample_images", f"must be >= 0, got {self.num_sample_images}")


@dataclass
class ExportConfig:
    enabled: bool = True  # write the trained model to run_dir/adapter at the end


@dataclass
class LoRAConfig:
    denoiser: Optional[dict[str, LoRASpec]] = None
    vae: Optional[dict[str, LoRASpec]] = None


@dataclass
class LoRATargets:
    """The backbone family's layer lists LoRA specs refer to by interpolation (``${lora_targets.denoiser}``;
    ``conf/lora_targets/<family>.yaml``)."""

    denoiser: list[str] = field(default_factory=lambda: list(UNET_TARGETS))
    cross_attention: list[str] = field(default_factory=lambda: list(UNET_CROSS_ATTENTION))
    vae: list[str] = field(default_factory=lambda: list(OSEDIFF_VAE_TARGETS))


@dataclass
class LossConfig:
    terms: dict[str, Any] = field(default_factory=dict)  # name → loss-term node (null: off)


@dataclass
class MemConfig:
    """RCOD's MEM experiment: a trained generator to regress M_L against, and the estimator."""

    generator_export: str = MISSING  # adapter export folder (or checkpoint) of the trained generator
    generator_overrides: list[str] = field(default_factory=list)  # e.g. [backbone.path=/models/sd21]
    estimator: Any = None  # _target_ node of the estimator
    optimizer: Any = None  # partial node of the estimator's optimizer


@dataclass
class DistillConfig:
    """The VAE distillation experiment (``experiment=distill_vae``): a trained generator, the small halves
    to train against its VAE, and their losses."""

    generator_export: str = MISSING  # export folder (or checkpoint) of the trained generator
    generator_overrides: list[str] = field(default_factory=list)  # e.g. [backbone.path=/models/sd21]
    decoder: Any = None  # _target_ node of the small decoder (null: keep the full one)
    encoder: Any = None  # _target_ node of the small encoder (null: keep the full one)
    pixel_weight: float = 1.0  # L1 between the small and the full decoder's images
    lpips_weight: float = 0.1  # LPIPS between them (0: off)
    vgg_weights: Optional[str] = None  # LPIPS's ImageNet VGG16 file (null: uncalibrated random trunk)
    lpips_weights: Optional[str] = None  # LPIPS's linear heads (lpips/weights/v0.1/vgg.pth)
    gan: Any = None  # optional adversarial term (losses.gan.GANLoss node) on the decoder's image
    encoder_weight: float = 1.0  # latent MSE of the small encoder
    knobs: Optional[list[Any]] = None  # knobs the decoder's ẑ is drawn at (null: the model's sweep and default)
    grad_clip: Optional[float] = 1.0
    optimizer: Any = None  # partial node of the students' optimizer
    scheduler: Any = None  # partial node of an LR schedule on it, stepped per step (null: constant)
    out_dir: str = MISSING  # the new export: the generator's plus distilled_vae.safetensors

    def __post_init__(self) -> None:
        for name in ("pixel_weight", "lpips_weight", "encoder_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise FieldError(name, f"must be a finite number >= 0, got {value}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise FieldError("grad_clip", f"must be a finite number > 0 or null, got {self.grad_clip}")


@dataclass
class TrainConfig:
    """The root of ``conf/train.yaml``; ``Any`` fields are components checked by their signature."""

    seed: int = 42
    cpu_threads: Optional[int] = None
    run_dir: str = "runs/default"
    run_lock: bool = True  # refuse a second live run in the same run_dir
    run_lock_ttl: float = 300.0  # seconds without a heartbeat after which another host's lock is dead
    job_id: Optional[str] = None  # the scheduler job the run belongs to (null: SLURM's, if any)
    ckpt_path: Optional[str] = None
    backbone: Any = MISSING
    noise: Any = MISSING
    conditioning: Any = MISSING
    modulation: Any = None
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lora_targets: LoRATargets = field(default_factory=LoRATargets)
    loss: LossConfig = field(default_factory=LossConfig)
    data: Any = MISSING
    degradation: Any = MISSING
    trainer: Any = MISSING  # lightning.Trainer arguments
    model: Any = None  # OneStepSR's non-component arguments
    optim: OptimConfig = field(default_factory=OptimConfig)
    val: Optional[ValConfig] = field(default_factory=ValConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    stages: Optional[list[Stage]] = None
    system: Any = MISSING  # _target_ of the system builder (conf/system)
    checkpoint: Optional[dict[str, Any]] = None  # name → checkpoint callback node (conf/checkpoint)
    callbacks: Optional[dict[str, Any]] = None  # name → callback node (conf/callbacks)
    logger: Optional[dict[str, Any]] = None  # name → logger node (conf/logger)
    mem: Optional[MemConfig] = None
    distill: Optional[DistillConfig] = None

    def __post_init__(self) -> None:
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise FieldError("cpu_threads", f"must be >= 1 or null, got {self.cpu_threads}")
        if not (math.isfinite(self.run_lock_ttl) and self.run_lock_ttl > 0):
            raise FieldError("run_lock_ttl", f"must be a finite number of seconds > 0, got {self.run_lock_ttl}")


# ------------------------------------------------------------------------------ extraction root

@dataclass
class ExtractConfig:
    """The root of ``conf/extract.yaml`` (TMG mask extraction)."""

    tagger: Any = MISSING
    grounding: Any = MISSING
    nouns: Any = MISSING
    trainer: Any = MISSING
    image_dirs: Optional[list[str]] = None
    shards: Optional[str] = None  # a packed shard set to annotate instead of image_dirs
    cache_dir: str = MISSING
    batch_size: int = 4
    num_workers: int = 2
    max_side: int = 1333
    mask_max_side: int = 512
    max_nouns: int = 16
    verify: str = "stat"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.cache_dir:
            raise FieldError("cache_dir", "is missing (the mask cache folder)")
        for name, low in (("max_nouns", 1), ("mask_max_side", 8), ("max_side", 32), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise FieldError(name, f"must be >= {low}, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise FieldError("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.verify not in ("stat", "sha1"):
            raise FieldError("verify", f"must be 'stat' or 'sha1', got {self.verify!r}")


# ------------------------------------------------------------------------------ packing root

@dataclass
class PackConfig:
    """The root of ``conf/pack.yaml`` (packing image folders into a shard set)."""

    input_dirs: Optional[list[str]] = None
    output_dir: Optional[str] = None
    workers: int = 2
    part_size: int = 256
    chunk_bytes: str = "64MB"
    min_size: Optional[int] = None
    max_pixels: Optional[int] = 200_000_000
    mask_cache: Optional[str] = None
    prompts: Optional[str] = None
    verify: str = "stat"

    def __post_init__(self) -> None:
        if not self.input_dirs:
            raise FieldError("input_dirs", "is missing: the HR image folders to pack (input_dirs=[/data/a,/data/b])")
        if not self.output_dir:
            raise FieldError("output_dir", "is missing: the shard set folder to write (output_dir=/data/shards/a)")
        for name, low in (("workers", 0), ("part_size", 1), ("min_size", 1), ("max_pixels", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise FieldError(name, f"must be >= {low}, got {value}")
        if self.verify not in ("stat", "sha1"):
            raise FieldError("verify", f"must be 'stat' or 'sha1', got {self.verify!r}")


# ------------------------------------------------------------------------------ component schemas

_PRIMITIVES = (int, float, bool, str, bytes, Path)


def _omegaconf_type(annotation: Any) -> Any:
    """The closest type OmegaConf can check for a Python annotation (``Any`` when it cannot)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _omegaconf_type(args[0])
    if annotation in _PRIMITIVES or dataclasses.is_dataclass(annotation) or (
            isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return annotation
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Any if inner is Any else Optional[inner]
    if origin in (list, tuple, typing.Sequence, __import__("collections.abc").abc.Sequence):
        items = [a for a in args if a is not Ellipsis]
        inner = {_omegaconf_type(a) for a in items}
        return list[inner.pop()] if len(inner) == 1 else list[Any]
    if origin in (dict, typing.Mapping, __import__("collections.abc").abc.Mapping):
        return dict[str, _omegaconf_type(args[1])] if len(args) == 2 else dict[str, Any]
    return Any


def _default(value: Any) -> Any:
    """A dataclass field default for a parameter default (containers as factories)."""
    if value is inspect.Parameter.empty:
        return field(default=MISSING)
    if isinstance(value, (list, tuple, dict, set)):
        copy = list(value) if not isinstance(value, dict) else dict(value)
        return field(default_factory=lambda: copy)
    if value is None or isinstance(value, _PRIMITIVES) or isinstance(value, enum.Enum):
        return field(default=value)
    return field(default=None)  # e.g. a callable default: the field is Any (see signature_schema)


def signature_schema(target: Any, skip: typing.Iterable[str] = ()) -> tuple[type | None, dict[str, list]]:
    """A dataclass whose fields are ``target``'s keyword parameters, and the constrained ones.

    The second value maps a parameter to its :class:`~lit_sr.typed.MustExist` /
    :class:`~lit_sr.typed.Range` markers. Returns ``(None, {})`` when the signature cannot be read
    or takes ``**kwargs`` (nothing to check).
    """
    fn = target.__init__ if isinstance(target, type) else target
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None, {}
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, NameError):  # unresolvable forward references: names are still checked
        hints = {}
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None, {}
    fields, constrained = [], {}
    skip = set(skip) | {"self"}
    for name, p in params.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        hint = hints.get(name, Any)
        markers = constraints_of(hint)
        if markers:
            constrained[name] = markers
        kind = _omegaconf_type(hint)
        default = p.default
        if default is not p.empty and default is not None and not isinstance(default, (*_PRIMITIVES, list, tuple, dict, enum.Enum)):
            kind = Any
        fields.append((name, kind, _default(default)))
    name = f"{getattr(target, '__qualname__', 'target')}Args".replace(".", "_")
    return dataclasses.make_dataclass(name, fields), constrained
