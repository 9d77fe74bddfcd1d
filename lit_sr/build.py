"""Config → objects. The one place that knows how config nodes become components."""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_sr.backbone import Backbone
from lit_sr.errors import ConfigError, LitSRError
from lit_sr.generator import OneStepSR


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
    backbone = backbone if backbone is not None else build_backbone(cfg)
    return OneStepSR(
        backbone,
        noise=build_component(cfg.noise, "noise"),
        conditioner=build_component(cfg.conditioning, "conditioning"),
        lora=_container(cfg.get("lora")),
        modulation=build_component(cfg.get("modulation"), "modulation"),
        **_container(cfg.get("model") or {}),
    )


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


def build_system(cfg: DictConfig, generator: OneStepSR | None = None):
    from lit_sr.module import SRSystem

    generator = generator if generator is not None else build_generator(cfg)
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
    )


def build_datamodule(cfg: DictConfig):
    degradation = build_component(cfg.degradation, "degradation")
    return build_component(cfg.data, "data", degradation=degradation)


def build_extra_callbacks(cfg: DictConfig) -> list:
    """Callbacks listed under ``callbacks`` in the config (each a ``_target_`` node)."""
    nodes = cfg.get("callbacks") or {}
    return [build_component(node, f"callbacks.{name}") for name, node in nodes.items() if node is not None]
