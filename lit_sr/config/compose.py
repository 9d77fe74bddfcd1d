"""Config composition and up-front validation.

Hydra's *compose API* gives groups and command-line overrides without ``@hydra.main`` (which
changes the working directory and breaks multi-process launches). Everything that can be checked
before a model is built is checked here, and every problem is one line naming the key:

* unknown keys and unknown group choices (from Hydra, reworded to one line);
* every ``_target_`` node: the target exists, its keyword arguments are accepted, and values
  whose annotation is a plain type (int/float/bool/str) have that type;
* the ``trainer`` node against ``lightning.Trainer``'s signature;
* component combinations that cannot work (components declare them; see :func:`check_combinations`).
"""
from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_sr.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "train", conf_dir: str | Path | None = None,
            top_level: set[str] | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``; raise :class:`ConfigError` on any problem.

    ``top_level``: the keys allowed at the root (default: the training config's, :data:`TOP_LEVEL`);
    other roots such as ``conf/extract.yaml`` pass their own.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value (e.g. trainer.max_steps=20)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir or CONF_DIR).resolve()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line_hydra_error(exc, conf_dir or CONF_DIR)) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config interpolation failed: {_first_line(exc)}") from None
    validate(cfg, top_level)
    return cfg


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _one_line_hydra_error(exc: BaseException, conf_dir: str | Path) -> str:
    text = str(exc)
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return f"unknown config key '{m.group(1)}' (to add a new key on purpose use +{m.group(1)}=...)"
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, choice = m.group(1), m.group(2)
        options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))
        return f"unknown {group} '{choice}'; available: {', '.join(options) or '(none)'}"
    m = re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        return f"unknown config key '{m.group(1)}'"
    return f"config error: {' '.join(ln.strip() for ln in text.splitlines() if ln.strip())}"


# ------------------------------------------------------------------------------ validation

def resolve_target(path: str, key: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{key}._target_: cannot import '{path}' ({_first_line(exc)})") from None


def _plain_type(annotation: Any) -> tuple[type, ...] | None:
    """The accepted runtime types for simple annotations; None when not checkable."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.replace(" | None", ""), None)
        if annotation is None:
            return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _plain_type(args[0])
        return None
    if annotation is float:
        return (int, float)
    if annotation in (int, bool, str):
        return (annotation,)
    return None


def check_kwargs(fn: Any, kwargs: dict, key: str) -> None:
    """Fail with one line when ``kwargs`` do not fit ``fn``'s signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = None
    else:
        accepted = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    try:
        hints = typing.get_type_hints(fn if inspect.isfunction(fn) else fn.__init__)
    except Exception:  # unresolvable forward references: skip type checks, keep name checks
        hints = {}
    for name, value in kwargs.items():
        if accepted is not None and name not in accepted:
            choices = ", ".join(sorted(accepted - {"self"}))
            raise ConfigError(f"unknown config key '{key}.{name}' (accepted: {choices})")
        if value is None or name not in hints:
            continue
        types = _plain_type(hints[name])
        if types and not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise ConfigError(f"bad value for '{key}.{name}': {value!r} is not {hints[name]}")
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    for name in required:
        if name not in kwargs and not _injected(fn, name):
            raise ConfigError(f"missing config key '{key}.{name}'")


def _injected(fn: Any, name: str) -> bool:
    """Constructor arguments the builder passes in code (not from YAML)."""
    return name in getattr(fn, "__injected_args__", ())


def _walk_targets(node: Any, key: str) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            target = resolve_target(str(node["_target_"]), key)
            kwargs = {k: _plain(node, k) for k in node if not str(k).startswith("_")}
            for k, v in kwargs.items():
                if v == "???":
                    raise ConfigError(f"missing value for '{key}.{k}' (set it on the command line: {key}.{k}=...)")
            check_kwargs(target, kwargs, key)
        for k in node:
            _walk_targets(node[k], f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk_targets(item, f"{key}[{i}]")


def _plain(node: DictConfig, k: str) -> Any:
    value = node._get_node(k)._value() if node._get_node(k) is not None else None
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value)
    return value


TOP_LEVEL = {"cpu_threads", "backbone", "noise", "conditioning", "lora", "loss", "data", "degradation", "trainer", "seed",
             "run_dir", "ckpt_path", "model", "modulation", "optim", "val", "export", "stages", "callbacks", "mem",
             "experiment_name", "inference"}


def validate(cfg: DictConfig, top_level: set[str] | None = None) -> None:
    """Check the whole composed config (see module docstring)."""
    unknown = set(cfg.keys()) - (TOP_LEVEL if top_level is None else set(top_level))
    if unknown:
        raise ConfigError(f"unknown config key '{sorted(unknown)[0]}'")
    if cfg.get("mem") is not None:  # before the walk, which would trip over its ??? value
        _validate_mem(cfg.mem)
    _walk_targets(cfg, "")
    if "trainer" in cfg:
        import lightning

        check_kwargs(lightning.Trainer.__init__, OmegaConf.to_container(cfg.trainer), "trainer")
    if "model" in cfg:
        from lit_sr.model.generator import OneStepSR

        check_kwargs(OneStepSR, OmegaConf.to_container(cfg.model), "model")
    if "optim" in cfg:
        allowed = {"lr", "weight_decay", "betas", "grad_clip"}
        for k in cfg.optim:
            if k not in allowed:
                raise ConfigError(f"unknown config key 'optim.{k}' (accepted: {', '.join(sorted(allowed))})")
        if not float(cfg.optim.lr) > 0:
            raise ConfigError(f"bad value for 'optim.lr': {cfg.optim.lr} (must be > 0)")
    if "lora" in cfg and cfg.lora is not None:
        from lit_sr.model.adapters import LoRASpec

        for part in cfg.lora:
            if part not in ("unet", "vae"):
                raise ConfigError(f"unknown config key 'lora.{part}' (accepted: unet, vae)")
            for name, spec in (cfg.lora[part] or {}).items():
                check_kwargs(LoRASpec, OmegaConf.to_container(spec), f"lora.{part}.{name}")
    if cfg.get("stages") is not None:
        from lit_sr.systems.stages import check_stages

        check_stages(cfg)
    check_combinations(cfg)


def _validate_mem(node: DictConfig) -> None:
    """The ``mem`` node of the MEM experiment (RCOD's metric estimator, see :mod:`lit_sr.model.mem`)."""
    allowed = {"generator_export", "generator_overrides", "estimator", "lr", "weight_decay"}
    for k in node:
        if k not in allowed:
            raise ConfigError(f"unknown config key 'mem.{k}' (accepted: {', '.join(sorted(allowed))})")
    if OmegaConf.is_missing(node, "generator_export") or not node.get("generator_export"):
        raise ConfigError("missing value for 'mem.generator_export' (the trained generator's export folder: "
                          "mem.generator_export=runs/x/adapter)")
    if not float(node.get("lr", 1e-3)) > 0:
        raise ConfigError(f"bad value for 'mem.lr': {node.lr} (must be > 0)")


def check_combinations(cfg: DictConfig) -> None:
    """Reject component combinations that cannot work, before anything is built.

    A component class may define ``requires(cfg) -> str | None``; a returned string is the
    one-line reason the combination is impossible.
    """
    for key in ("backbone", "noise", "conditioning", "modulation", "data", "degradation"):
        node = cfg.get(key)
        if isinstance(node, DictConfig) and "_target_" in node:
            target = resolve_target(str(node._target_), key)
            check = getattr(target, "requires", None)
            if callable(check):
                problem = check(cfg)
                if problem:
                    raise ConfigError(problem)
    if "loss" in cfg and cfg.loss is not None:
        for name, term in (cfg.loss.get("terms") or {}).items():
            if term is None:
                continue
            target = resolve_target(str(term._target_), f"loss.terms.{name}")
            check = getattr(target, "requires", None)
            if callable(check):
                problem = check(cfg)
                if problem:
                    raise ConfigError(problem)
