"""Config → objects. The one place that knows how config nodes become components."""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_sr.model.backbone import Backbone
from lit_sr.errors import ConfigError, LitSRError
from lit_sr.model.generator import OneStepSR


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_component(node: DictConfig | None, key: str = "", **kwargs: Any) -> Any:
    """Instantiate one ``_target_`` node (lists/dicts arrive as plain Python containers).

    A constructor's ValueError (a bad value it checks) becomes a one-line ConfigError naming the node.
    """
    if node is None:
        return None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, LitSRError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{key or node.get('_target_')}: {str(cause).splitlines()[0]}") from None
        raise


def build_backbone(cfg: DictConfig) -> Backbone:
    return build_component(cfg.backbone, "backbone")


def build_generator(cfg: DictConfig, backbone: Backbone | None = None) -> OneStepSR:
    """The generator with every adapter the run will ever use, so checkpoints have stable keys.

    Adapters added by later stages (``stages[i].add_adapters``) join ``lora.unet``; adapters that
    loss terms keep on the generator's UNet (VSD's fake score, declared by the term class's
    ``generator_adapters``) are added inactive and frozen, so an export of a VSD-trained run
    loads into a generator built from the same config.
    """
    from lit_sr.systems.stages import added_adapters, parse_stages

    backbone = backbone if backbone is not None else build_backbone(cfg)
    lora = _container(cfg.get("lora")) or {}
    extra = added_adapters(parse_stages(cfg.get("stages")))
    if extra:
        lora = {**lora, "unet": {**(lora.get("unet") or {}), **extra}}
    generator = OneStepSR(
        backbone,
        noise=build_component(cfg.noise, "noise"),
        conditioner=build_component(cfg.conditioning, "conditioning"),
        lora=lora,
        modulation=build_component(cfg.get("modulation"), "modulation"),
        **_container(cfg.get("model") or {}),
    )
    _add_loss_term_adapters(cfg, generator)
    return generator


def _add_loss_term_adapters(cfg: DictConfig, generator: OneStepSR) -> None:
    from lit_sr.config.compose import resolve_target
    from lit_sr.model.adapters import adapter_names
    from losses.vsd import add_inactive_adapter

    terms = (cfg.get("loss") or {}).get("terms") or {}
    for key, node in terms.items():
        if node is None:
            continue
        declare = getattr(resolve_target(str(node._target_), f"loss.terms.{key}"), "generator_adapters", None)
        if not callable(declare):
            continue
        for name, spec in declare(_container(node)).items():
            if name not in adapter_names(generator.unet):
                add_inactive_adapter(generator, name, spec)


def build_losses(cfg: DictConfig) -> dict:
    terms = cfg.loss.get("terms") or {}
    return {name: build_component(node, f"loss.terms.{name}") for name, node in terms.items() if node is not None}


def build_val_metrics(cfg: DictConfig):
    from lit_sr.metrics.suite import MetricSuite

    val = cfg.get("val") or {}
    lpips_cfg = (cfg.loss.get("terms") or {}).get("lpips") or {}
    return MetricSuite(
        list(val.get("metrics", ["psnr", "ssim", "lpips"])),
        crop_border=int(cfg.degradation.scale),
        vgg_weights=lpips_cfg.get("vgg_weights"),
        lpips_weights=lpips_cfg.get("lpips_weights"),
        allow_random_weights=True,  # training-time monitoring; the evaluation CLI is strict
    )


def build_system(cfg: DictConfig, generator: OneStepSR | None = None, backbone: Backbone | None = None):
    """The training system; ``backbone`` (built here when neither it nor ``generator`` is given) is
    handed to loss terms' ``attach`` (e.g. VSD embeds its negative prompt) and not kept."""
    from lit_sr.systems.sr import SRSystem

    if generator is None:
        backbone = backbone if backbone is not None else build_backbone(cfg)
        generator = build_generator(cfg, backbone)
    optim = cfg.optim
    return SRSystem(
        generator,
        build_losses(cfg),
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        betas=tuple(optim.betas),
        grad_clip=optim.grad_clip,
        val_metrics=build_val_metrics(cfg),
        seed=int(cfg.seed),
        config=OmegaConf.to_container(cfg, resolve=True),
        stages=cfg.get("stages"),
        backbone=backbone,
    )


def build_mem_system(cfg: DictConfig):
    """RCOD's MEM trainer (``experiment=mem``): a frozen trained generator + a new estimator."""
    from lit_sr.config.loading import load_generator
    from lit_sr.systems.mem import MEMSystem

    node = cfg.mem
    generator, _ = load_generator(str(node.generator_export), list(node.get("generator_overrides") or []))
    estimator = build_component(node.estimator, "mem.estimator", latent_channels=int(generator.vae.config.latent_channels))
    return MEMSystem(generator, estimator, lr=float(node.get("lr", 1e-3)), weight_decay=float(node.get("weight_decay", 0.0)),
                     config=OmegaConf.to_container(cfg, resolve=True))


def build_datamodule(cfg: DictConfig):
    degradation = build_component(cfg.degradation, "degradation")
    return build_component(cfg.data, "data", degradation=degradation)


def build_extra_callbacks(cfg: DictConfig) -> list:
    """Callbacks listed under ``callbacks`` in the config (each a ``_target_`` node)."""
    nodes = cfg.get("callbacks") or {}
    return [build_component(node, f"callbacks.{name}") for name, node in nodes.items() if node is not None]


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
    if not getattr(system, "partial_backward", False):
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
