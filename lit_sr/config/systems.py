"""The training systems built from config: ``conf/system/*.yaml`` name one of these as ``_target_``.

``python train.py`` builds ``cfg.system`` with the composed config; ``experiment=mem`` selects
``system=mem`` (RCOD's MEM trainer) and ``experiment=distill_vae`` ``system=distill`` (small VAE
halves distilled from a trained model) instead of the SR system, with no special case in train.py.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lit_sr.config.build import (
    build_backbone,
    build_component,
    build_generator,
    build_losses,
    build_val_baseline,
    build_val_metrics,
)
from lit_sr.config.compose import resolve_target
from lit_sr.config.loading import load_config, load_generator
from lit_sr.errors import ConfigError
from lit_sr.model.backbone import Backbone
from lit_sr.model.generator import OneStepSR
from lit_sr.model.noise.ldg import LDGNoise
from lit_sr.systems.distill import DistillSystem
from lit_sr.systems.mem import MEMSystem
from lit_sr.systems.sr import SRSystem
from lit_sr.systems.stages import parse_stages


def sr_system(cfg: DictConfig, generator: OneStepSR | None = None, backbone: Backbone | None = None) -> SRSystem:
    """The SR training system; loss terms are built before the backbone (their errors come first).

    ``backbone`` (built here when neither it nor ``generator`` is given) is handed to the loss
    terms' ``attach`` (e.g. VSD embeds its negative prompt) and not kept.
    """
    losses = build_losses(cfg)
    stages = parse_stages(cfg.get("stages"))
    if generator is None:
        backbone = backbone if backbone is not None else build_backbone(cfg)
        generator = build_generator(cfg, backbone)
    optim = cfg.optim
    return SRSystem(
        generator,
        losses,
        optimizer=build_component(optim.get("optimizer"), "optim.optimizer"),
        lr=float(optim.lr),
        scheduler=build_component(optim.get("scheduler"), "optim.scheduler"),
        grad_clip=optim.grad_clip,
        accumulate_grad_batches=int(optim.accumulate_grad_batches),
        max_nonfinite_steps=int(optim.max_nonfinite_steps),
        val_metrics=build_val_metrics(cfg),
        val_baseline=build_val_baseline(cfg),
        seed=int(cfg.seed),
        config=OmegaConf.to_container(cfg, resolve=True),
        stages=stages,
        backbone=backbone,
    )


def mem_system(cfg: DictConfig, generator: OneStepSR | None = None, backbone: Backbone | None = None) -> MEMSystem:
    """RCOD's MEM trainer (``experiment=mem``): a frozen trained LDG generator + a new estimator."""
    node = cfg.get("mem")
    if node is None:
        raise ConfigError("system=mem trains RCOD's MEM and needs the mem node: use experiment=mem "
                          "mem.generator_export=<trained LDG export>")
    source, overrides = str(node.generator_export), list(node.get("generator_overrides") or [])
    noise = generator.noise if generator is not None else None
    if noise is None:  # read the stored config first: a wrong generator fails before it is built
        target = resolve_target(str(load_config(source, overrides).noise._target_), "noise")
    if not (isinstance(noise, LDGNoise) if noise is not None else issubclass(target, LDGNoise)):
        name = type(noise).__name__ if noise is not None else target.__name__
        raise ConfigError(f"experiment=mem: the MEM estimates LDG's latent metric, but {source} was trained with "
                          f"{name} (train the generator with noise=ldg)")
    if generator is None:
        generator, _ = load_generator(source, overrides)
    if generator.noise.needs_calibration:
        raise ConfigError(f"experiment=mem: {source} has LDG groups from the training data (noise.m_min/m_max: auto or "
                          "grouping: quantile) that were never computed: export it from a training run, or set them "
                          "with mem.generator_overrides=[noise.m_min=…,noise.m_max=…]")
    estimator = build_component(node.estimator, "mem.estimator", latent_channels=int(generator.vae.channels))
    return MEMSystem(generator, estimator, optimizer=build_component(node.get("optimizer"), "mem.optimizer"),
                     config=OmegaConf.to_container(cfg, resolve=True))


def distill_system(cfg: DictConfig, generator: OneStepSR | None = None, backbone: Backbone | None = None) -> DistillSystem:
    """Small VAE halves distilled from a trained generator's own VAE (``experiment=distill_vae``)."""
    node = cfg.get("distill")
    if node is None:
        raise ConfigError("system=distill trains small VAE halves and needs the distill node: use experiment=distill_vae "
                          "distill.generator_export=<trained export>")
    if node.get("decoder") is None and node.get("encoder") is None:
        raise ConfigError("experiment=distill_vae: nothing to distil (distill.decoder and distill.encoder are both null)")
    source, overrides = str(node.generator_export), list(node.get("generator_overrides") or [])
    if generator is None:
        generator, source_cfg = load_generator(source, overrides)
    else:
        source_cfg = load_config(source, overrides)
    problem = "endpoint (IFCSR) models" if generator.has_endpoints else None
    if problem:
        raise ConfigError(f"experiment=distill_vae: {source}: {problem} are not supported (their two passes would need "
                          "one decoder each)")
    vae = generator.vae
    parts = {name: build_component(node.get(name), f"distill.{name}", latent_channels=int(vae.channels),
                                   factor=int(vae.factor)) for name in ("decoder", "encoder")}
    lpips = None
    if float(node.lpips_weight) > 0 and parts["decoder"] is not None:
        from lit_sr.model.lpips import LPIPS

        lpips = LPIPS(vgg_weights=node.get("vgg_weights"), lpips_weights=node.get("lpips_weights"))
    return DistillSystem(generator, parts["decoder"], parts["encoder"], pixel_weight=float(node.pixel_weight),
                         lpips_weight=float(node.lpips_weight), lpips=lpips, gan=build_component(node.get("gan"), "distill.gan"),
                         encoder_weight=float(node.encoder_weight),
                         knobs=_distill_knobs(generator, node.get("knobs")),
                         optimizer=build_component(node.get("optimizer"), "distill.optimizer"),
                         scheduler=build_component(node.get("scheduler"), "distill.scheduler"),
                         grad_clip=node.get("grad_clip"), seed=int(cfg.seed),
                         config=OmegaConf.to_container(cfg, resolve=True), source=source,
                         source_config=OmegaConf.to_container(source_cfg, resolve=True))


def _distill_knobs(generator: OneStepSR, given) -> list:
    """The knobs ẑ is drawn at: the given ones (checked), else the model's sweep and its default."""
    noise = generator.noise
    try:
        if given is not None:
            return [noise.parse_knob(k) for k in given]
        return list(dict.fromkeys([noise.parse_knob(None), *(noise.parse_knob(k) for k in noise.knob_values())]))
    except ValueError as exc:
        raise ConfigError(f"distill.knobs: {str(exc).splitlines()[0]}") from None


def build_system(cfg: DictConfig, generator: OneStepSR | None = None, backbone: Backbone | None = None):
    """The system ``cfg.system._target_`` names (see ``conf/system``), built from the whole config."""
    builder = resolve_target(str(cfg.system._target_), "system")
    return builder(cfg, generator=generator, backbone=backbone)
