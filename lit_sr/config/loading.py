"""Rebuild a trained generator from an adapter export folder or a Lightning checkpoint.

Checkpoints are read with ``torch.load(weights_only=True)``: a lit_sr checkpoint holds tensors
and plain containers only, so a file that needs anything else (a crafted pickle) is refused with
one line, and none of its code runs.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_sr.config.build import build_generator
from lit_sr.config.compose import validate
from lit_sr.config.migrate import upgrade
from lit_sr.errors import ConfigError, WeightsError
from lit_sr.model.distilled import attach_distilled, check_choice
from lit_sr.model.export import CONFIG_FILE, load_export
from lit_sr.model.generator import OneStepSR
from lit_sr.typed import config_error_line


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, loaded without unpickling arbitrary objects."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unsupported pickle content"
        raise WeightsError(f"{path}: refused: it holds Python objects a lit_sr checkpoint never contains ({reason[:160]})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: not a lit_sr checkpoint")
    return ckpt


def load_config(source: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """The run config stored with an export folder (``config.yaml``) or a checkpoint, with overrides."""
    path = Path(source)
    if not path.exists():
        raise WeightsError(f"model not found: {path}")
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise WeightsError(f"{path}: not an adapter export folder (no {CONFIG_FILE})")
        cfg = OmegaConf.load(path / CONFIG_FILE)
    else:
        try:
            cfg = OmegaConf.create(read_checkpoint(path)["hyper_parameters"]["config"])
        except (KeyError, TypeError):
            raise WeightsError(f"{path}: not a lit_sr checkpoint (no stored config)") from None
    cfg = upgrade(cfg)
    items = list(overrides or [])
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ConfigError(f"bad override {bad[0]!r}: expected key=value")
    OmegaConf.set_struct(cfg, True)  # an override of a key the run did not have is a typo, not a new key
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(items))
    except OmegaConfBaseException as exc:
        raise ConfigError(config_error_line(exc)) from None
    OmegaConf.set_struct(cfg, False)
    _check_targets(cfg, path)
    validate(cfg)
    return cfg


# A model folder is data: the objects its stored config may name are the project's components and
# the library classes its configs use (optimizers, schedulers, Lightning callbacks and loggers) —
# never an arbitrary callable such as os.system. Two gates: the module path must lie under one of
# these prefixes (so nothing else is even imported), and the resolved object must be one of
# :func:`trusted_objects` (a prefix alone lets ``lit_sr.config.run.os.system`` through).
TRUSTED_PREFIXES = ("lit_sr.", "datamodules.", "callbacks.", "losses.", "torch.optim.", "lightning.pytorch.",
                    "diffusers.optimization.")


# The factory functions a stored config may name, by the qualified name of the resolved object (its own
# module, not the path the config wrote: ``lit_sr.config.run.os.system`` resolves to ``posix.system``).
TRUSTED_FUNCTIONS = frozenset({
    "lit_sr.model.families.sd.load_sd", "lit_sr.model.families.sd.tiny_sd",  # the backbone families' loaders
    "lit_sr.model.families.sd3.load_sd3", "lit_sr.model.families.sd3.tiny_sd3",
    "lit_sr.config.systems.sr_system", "lit_sr.config.systems.mem_system", "lit_sr.config.systems.distill_system",
})


def trusted_objects() -> tuple[tuple[type, ...], frozenset]:
    """The classes a stored config's ``_target_`` may be (or derive from) and the factory functions
    it may name (qualified names) — an explicit set; a new factory function in ``conf/`` must be
    added to :data:`TRUSTED_FUNCTIONS` (a test composes every config file against it)."""
    import lightning as L
    from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from lightning.pytorch.loggers import Logger
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from datamodules.degradation.base import Degradation
    from lit_sr.model.backbone import Backbone
    from lit_sr.model.conditioning.base import Conditioner
    from lit_sr.model.mem import MetricEstimator
    from lit_sr.model.modulation import Modulation
    from lit_sr.model.noise.base import NoiseStrategy
    from lit_sr.model.small_vae import SmallVAEPart
    from losses.base import LossTerm

    classes = (NoiseStrategy, Conditioner, Modulation, LossTerm, MetricEstimator, SmallVAEPart, Backbone, Degradation,
               L.LightningDataModule, L.Callback, Logger, Optimizer, LRScheduler)
    schedulers = {f"{f.__module__}.{f.__qualname__}" for f in TYPE_TO_SCHEDULER_FUNCTION.values()}
    return classes, frozenset(TRUSTED_FUNCTIONS | schedulers)


def is_trusted_target(target: str) -> bool:
    """Whether ``target`` (a ``_target_`` string) names one of :func:`trusted_objects`."""
    from lit_sr.config.compose import resolve_target

    if not target.startswith(TRUSTED_PREFIXES):
        return False
    try:
        obj = resolve_target(target, "_target_")
    except ConfigError:
        return False
    classes, functions = trusted_objects()
    if isinstance(obj, type):
        return issubclass(obj, classes)
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}" in functions


def _check_targets(node: Any, source: Path, key: str = "") -> None:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not is_trusted_target(str(target)):
            raise WeightsError(f"{source}: refusing to load: its config names {key or 'the root'}._target_="
                               f"{target!r}, which is not one of the project's components or the library classes "
                               "its configs use")
        for k, v in node.items():
            _check_targets(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_targets(v, source, f"{key}[{i}]")


def load_generator(source: str | Path, overrides: list[str] | None = None, decoder: str = "full",
                   encoder: str = "full") -> tuple[OneStepSR, DictConfig]:
    """Generator with its trained tensors restored; ``overrides`` e.g. ``backbone.path=/models/sd21``.

    ``decoder`` / ``encoder``: ``full`` (the backbone's VAE half) or ``distilled`` (the export's
    distilled one, :mod:`lit_sr.model.distilled`).
    """
    for part, choice in (("decoder", decoder), ("encoder", encoder)):
        check_choice(part, choice)  # a bad value fails before the model is built
    cfg = load_config(source, overrides)
    generator = build_generator(cfg, training=False)
    path = Path(source)
    if path.is_dir():
        load_export(generator, path)
    else:
        state = read_checkpoint(path)["state_dict"]
        prefix = "generator."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        expected = generator.model_state_dict()
        missing = set(expected) - set(sub)
        if missing:
            raise WeightsError(f"{path}: checkpoint lacks {len(missing)} generator tensors, e.g. {sorted(missing)[0]}")
        params = dict(generator.named_parameters())
        with torch.no_grad():
            for k in expected:
                params[k].copy_(sub[k])
    attach_distilled(generator, path, decoder, encoder)
    return generator.eval(), cfg
