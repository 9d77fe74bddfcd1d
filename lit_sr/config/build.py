"""Config → objects: the one place that knows how config nodes become components.

Cheap components (data, degradation, loss terms) can be built before the backbone, so a bad
value they reject ends the run with one line before minutes of model loading.
"""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_sr.config.compose import backbone_facts, resolve_target
from lit_sr.errors import ConfigError, LitSRError
from lit_sr.model.backbone import Backbone
from lit_sr.model.generator import OneStepSR
from lit_sr.systems.stages import added_adapters, parse_stages
from losses.base import LossTerm


def container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_component(node: DictConfig | None, key: str = "", **kwargs: Any) -> Any:
    """Instantiate one ``_target_`` node (lists/dicts arrive as plain Python containers).

    A constructor's ValueError/TypeError (a bad value it checks) becomes a one-line ConfigError
    naming the node; a missing optional package (e.g. ``wandb`` for its logger) too.
    """
    if node is None:
        return None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, LitSRError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, ModuleNotFoundError)):
            raise ConfigError(_keyed(key or str(node.get("_target_")), cause)) from None
        raise


def _keyed(key: str, exc: BaseException) -> str:
    """The first line of ``exc``, with ``key`` in front unless the message already names it."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if text.startswith((f"{key}.", f"{key}:", f"{key}=")) else f"{key}: {text}"


def build_backbone(cfg: DictConfig) -> Backbone:
    return build_component(cfg.backbone, "backbone")


def generator_lora(cfg: DictConfig) -> dict:
    """Every adapter the run will ever use: ``lora`` plus the adapters stages add."""
    lora = container(cfg.get("lora")) or {}
    extra = added_adapters(parse_stages(cfg.get("stages")))
    if extra:
        lora = {**lora, "denoiser": {**(lora.get("denoiser") or {}), **extra}}
    return lora


def build_generator(cfg: DictConfig, backbone: Backbone | None = None, training: bool = True) -> OneStepSR:
    """The generator with every adapter the run will ever use, so checkpoints have stable keys.

    For training, adapters loss terms keep on the generator's denoiser (``LossTerm.generator_adapters``,
    e.g. VSD's fake score) are added too, inactive and frozen; ``training=False`` (inference)
    leaves them out — the export does not hold them.
    """
    noise = build_component(cfg.noise, "noise")  # cheap parts first: their errors come before the backbone
    param = backbone.parameterisation if backbone is not None else backbone_facts(cfg)[1]
    if param is not None:
        try:
            noise.attach(param)
        except ValueError as exc:
            raise ConfigError(_keyed("noise", exc)) from None
    conditioner = build_component(cfg.conditioning, "conditioning")
    modulation = build_component(cfg.get("modulation"), "modulation")
    backbone = backbone if backbone is not None else build_backbone(cfg)
    generator = OneStepSR(backbone, noise=noise, conditioner=conditioner, lora=generator_lora(cfg),
                          modulation=modulation, **(container(cfg.get("model")) or {}))
    for key, node in (loss_terms(cfg) if training else {}).items():
        cls: type[LossTerm] = resolve_target(str(node._target_), f"loss.terms.{key}")
        for name, spec in cls.generator_adapters(container(node), generator.denoiser.lora_presets).items():
            if name not in generator.adapters.names("denoiser"):
                generator.adapters.add("denoiser", name, spec)
    return generator


def loss_terms(cfg: DictConfig) -> dict[str, DictConfig]:
    terms = (cfg.get("loss") or {}).get("terms") or {}
    return {name: node for name, node in terms.items() if node is not None}


def build_losses(cfg: DictConfig) -> dict[str, LossTerm]:
    return {name: build_component(node, f"loss.terms.{name}") for name, node in loss_terms(cfg).items()}


def build_val_metrics(cfg: DictConfig):
    from lit_sr.metrics.suite import MetricSuite, MetricWeights

    val = cfg.get("val")
    if val is None:
        return None
    lpips = loss_terms(cfg).get("lpips") or {}
    return MetricSuite(list(val.metrics), crop_border=int(cfg.degradation.scale),
                       weights=MetricWeights(vgg=lpips.get("vgg_weights"), lpips=lpips.get("lpips_weights"),
                                             allow_random=True))  # training-time monitoring; evaluation is strict


def build_val_baseline(cfg: DictConfig):
    """PSNR/SSIM of bicubic upsampling on the validation images, logged beside the model's."""
    from lit_sr.metrics.suite import MetricSuite

    val = cfg.get("val")
    names = [n for n in ("psnr", "ssim") if val is not None and n in val.metrics]
    if not names or not val.get("bicubic_baseline", True):
        return None
    return MetricSuite(names, crop_border=int(cfg.degradation.scale))


def build_datamodule(cfg: DictConfig):
    degradation = build_component(cfg.degradation, "degradation")
    return build_component(cfg.data, "data", degradation=degradation)


def build_callbacks(cfg: DictConfig) -> list:
    """Every node under ``checkpoint`` and ``callbacks`` (each a ``_target_`` node).

    Progress bars are left out when ``trainer.enable_progress_bar`` is false (Lightning refuses both).
    """
    from lightning.pytorch.callbacks import ProgressBar

    nodes = {f"{group}.{k}": v for group in ("checkpoint", "callbacks") for k, v in (cfg.get(group) or {}).items()}
    bar = bool(cfg.trainer.get("enable_progress_bar", True))
    out = []
    for key, node in nodes.items():
        if node is None or (not bar and issubclass(resolve_target(str(node._target_), key), ProgressBar)):
            continue
        out.append(build_component(node, key))
    return out


def build_loggers(cfg: DictConfig) -> list:
    return [build_component(node, f"logger.{key}") for key, node in (cfg.get("logger") or {}).items() if node is not None]


def trainer_kwargs(cfg: DictConfig, system: Any) -> dict:
    """``cfg.trainer`` as Trainer arguments, with DDP told to expect unused parameters when it must.

    A system whose backward passes reach only part of its parameters (training stages, loss terms
    with their own networks: VSD's fake score, a discriminator) fails under plain DDP. When such a
    system would run under DDP (``strategy: ddp``, or ``auto`` with more than one device or
    node), the strategy becomes ``ddp_find_unused_parameters_true``; any other explicit strategy
    is left as given.
    """
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(args, dict)
    if not system.partial_backward:
        return args
    strategy = args.get("strategy", "auto")
    many = int(args.get("num_nodes", 1) or 1) > 1 or _device_count(args.get("devices", "auto"), args.get("accelerator")) > 1
    if strategy == "ddp" or (strategy == "auto" and many):
        args["strategy"] = "ddp_find_unused_parameters_true"
    return args


def _device_count(devices: Any, accelerator: Any) -> int:
    """How many devices a Trainer ``devices`` value asks for (``-1``/``auto``: every visible GPU)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if text in ("-1", "auto"):
        if accelerator in ("gpu", "cuda"):
            import torch

            return torch.cuda.device_count()
        return 1
    if "," in text:  # "0,1": device indices
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else 1
