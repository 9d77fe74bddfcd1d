"""Config composition and up-front validation.

Hydra's *compose API* gives groups and command-line overrides without ``@hydra.main`` (which
changes the working directory and breaks multi-process launches). Everything that can be checked
before a model is built is checked here, and every problem is one line naming the key:

* unknown keys and unknown group choices (Hydra's exceptions carry the key and the choices);
* the typed nodes against their schemas (:mod:`lit_sr.config.schema`: OmegaConf checks keys and
  types, ``__post_init__`` the values);
* every ``_target_`` node against a schema derived from its target's signature, including paths
  that must exist (:mod:`lit_sr.model.paths`);
* combinations that cannot work: components deriving from :class:`~lit_sr.model.facts.Checked`
  answer ``requires(node, facts)``.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_sr.errors import ConfigError, FieldError, WeightsError
from lit_sr.typed import check_constraints, merge_checked, to_object

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "train", conf_dir: str | Path | None = None,
            schema: type | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and validate it against ``schema``
    (default: :class:`~lit_sr.config.schema.TrainConfig`); raise :class:`ConfigError` on any problem."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException

    overrides = [quote_value(item) for item in overrides or []]
    for item in overrides:
        if "=" not in item and not item.startswith("~"):  # ~key deletes a key
            raise ConfigError(f"bad override {item!r}: expected key=value (e.g. trainer.max_steps=20)")
    root = Path(conf_dir or CONF_DIR).resolve()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(root), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as exc:
        group, _, choice = str(exc.missing_cfg_file).rpartition("/")
        options = exc.options or sorted(p.stem for p in (root / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} '{choice}'; available: {', '.join(options) or '(none)'}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
        key = getattr(cause, "full_key", None)
        if key and "override" in str(exc):
            raise ConfigError(f"unknown config key '{key}' (to add a new key on purpose use +{key}=...)") from None
        raise ConfigError(f"config error: {_first_line(exc)}") from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config interpolation failed: {_first_line(exc)}") from None
    if schema is None:
        from lit_sr.config.schema import TrainConfig

        schema = TrainConfig
    validate(cfg, schema)
    return cfg


def quote_value(item: str) -> str:
    """``key=a=b`` as ``key='a=b'``: a value holding ``=`` (Lightning's ``epoch=0-step=80.ckpt``
    names) is one string, not Hydra syntax. Lists, dicts and quoted values stay as given."""
    key, sep, value = item.partition("=")
    if not sep or "=" not in value or value[:1] in "'\"[{":
        return item
    return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------------ validation

def resolve_target(path: str, key: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
        return getattr(obj, attr)
    except ImportError as exc:
        # "a.b.Class.method": import the longest module prefix, then walk attributes.
        parts = path.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for name in parts[cut:]:
                    obj = getattr(obj, name)
                return obj
            except AttributeError:
                break
        raise ConfigError(f"{key}._target_: cannot import '{path}' ({_first_line(exc)})") from None
    except (AttributeError, ValueError) as exc:
        raise ConfigError(f"{key}._target_: cannot import '{path}' ({_first_line(exc)})") from None


def check_node(node: DictConfig, target: Any, key: str, skip: tuple[str, ...] = ()) -> None:
    """``node``'s keys, types, missing values and paths against ``target``'s signature (one line each)."""
    from lit_sr.config.schema import signature_schema

    schema, paths = signature_schema(target, (*skip, *getattr(target, "__injected_args__", ())))
    for k in node.keys():
        if OmegaConf.is_missing(node, k):
            raise ConfigError(f"missing value for '{key}.{k}' (set it on the command line: {key}.{k}=...)")
    values = {k: node.get(k) for k in node.keys() if not str(k).startswith("_")}
    if schema is None:
        return
    partial = bool(node.get("_partial_", False))  # the caller supplies the rest (e.g. the parameters)
    given = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not str(k).startswith("_")}
    try:
        typed = merge_checked(schema, given, key)
        if not partial:  # runs nested dataclasses' __post_init__ checks (e.g. degradation stages)
            to_object(typed, key)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith(f"unknown config key '{key}.") and message.count(".") == key.count(".") + 1:
            message += f" (accepted: {', '.join(f.name for f in dataclasses.fields(schema))})"
        raise ConfigError(message) from None
    for name, markers in paths.items():
        problem = check_constraints(markers, values.get(name))
        if problem:
            raise ConfigError(f"{key}.{name}: {problem}")


def _walk_targets(node: Any, key: str, found: list[tuple[str, DictConfig, Any]]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            target = resolve_target(str(node["_target_"]), key)
            if key == "system":  # a builder of the whole config, chosen by name: nothing else to set
                extra = [k for k in node if k != "_target_"]
                if extra:
                    raise ConfigError(f"unknown config key 'system.{extra[0]}' (the system node only names its builder)")
                return
            check_node(node, target, key)
            found.append((key, node, target))
        for k in node:
            if not str(k).startswith("_"):
                _walk_targets(node[k], f"{key}.{k}" if key else str(k), found)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk_targets(item, f"{key}[{i}]", found)


def validate(cfg: DictConfig, schema: type | None = None) -> None:
    """Check a composed config (see the module docstring); raise one-line :class:`ConfigError`."""
    from lit_sr.config.schema import TrainConfig

    schema = schema or TrainConfig
    typed = _typed(cfg, schema)
    targets: list[tuple[str, DictConfig, Any]] = []
    _walk_targets(cfg, "", targets)
    if schema is TrainConfig:
        _validate_train(cfg, typed, targets)
    elif "trainer" in cfg:
        import lightning

        check_node(cfg.trainer, lightning.Trainer, "trainer")


def _typed(cfg: DictConfig, schema: type) -> Any:
    """``cfg`` as the schema's dataclass (keys and types by OmegaConf, values by ``__post_init__``)."""
    import dataclasses

    merged = merge_checked(schema, cfg)
    values = {f.name: to_object(merged[f.name], f.name) for f in dataclasses.fields(schema)}
    try:
        return schema(**values)
    except FieldError as exc:
        raise ConfigError(exc.at("")) from None


def facts_of(cfg: DictConfig):
    """The run-wide facts components' ``requires`` may ask about (:class:`~lit_sr.model.facts.RunFacts`)."""
    from lit_sr.model.conditioning.base import Conditioner
    from lit_sr.model.facts import RunFacts
    from lit_sr.model.noise.base import NoiseStrategy

    def cls(key: str, base: type) -> type | None:
        node = OmegaConf.select(cfg, key)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            return None
        target = resolve_target(str(node._target_), key)
        if not (isinstance(target, type) and issubclass(target, base)):
            raise ConfigError(f"{key}._target_: {node._target_} is not a {base.__name__}")
        return target

    backbone = cfg.get("backbone") or {}
    noise, cond = cls("noise", NoiseStrategy), cls("conditioning", Conditioner)
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    family, param = backbone_facts(cfg)
    fixed = (cfg.get("noise") or {}).get("timestep") if noise is not None and not noise.has_knob else None
    return RunFacts(
        text_encoder=bool(backbone.get("text_encoder", True)),
        vision_encoder=bool(backbone.get("vision_encoder")),
        conditioning_uses_text=bool(cond is not None and cond.uses_text),
        mask_cache=(cfg.get("data") or {}).get("mask_cache"),
        tile_latent=model.get("tile_latent"),
        noise_has_knob=bool(noise is not None and noise.has_knob),
        endpoints=bool(model.get("endpoints")),
        has_val=cfg.get("val") is not None,
        val_crop=None if data.get("val_paired") is not None else data.get("val_crop"),
        parameterisation=param.kind if param is not None else "epsilon",
        family=family or "unet",
        noise_fixed_timestep=int(fixed) if isinstance(fixed, int) else None,
    )


def backbone_facts(cfg: DictConfig):
    """(family, parameterisation) of the configured backbone, read without loading it (None, None when
    ``backbone._target_`` is not a declared builder; see :func:`lit_sr.model.backbone.builder`)."""
    node = cfg.get("backbone")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None, None
    target = resolve_target(str(node._target_), "backbone")
    reader = getattr(target, "parameterisation_of", None)
    if reader is None:
        return None, None
    try:
        return target.backbone_family, reader(node)
    except WeightsError:  # an incomplete folder: the builder names what is missing when it loads
        return target.backbone_family, None
    except ValueError as exc:
        raise ConfigError(f"backbone: {str(exc).splitlines()[0]}") from None


def _validate_train(cfg: DictConfig, typed: Any, targets: list[tuple[str, DictConfig, Any]]) -> None:
    import lightning

    from lit_sr.model.facts import Checked
    from lit_sr.model.generator import OneStepSR

    check_node(cfg.trainer, lightning.Trainer, "trainer")
    max_steps = cfg.trainer.get("max_steps", -1)
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or (max_steps != -1 and max_steps < 1):
        raise ConfigError(f"trainer.max_steps must be a number of optimizer steps >= 1 (or -1: until max_epochs), "
                          f"got {max_steps!r}")
    if cfg.get("model") is not None:
        check_node(cfg.model, OneStepSR, "model")
    dtype, precision = str(cfg.backbone.get("dtype", "fp32")), str(cfg.trainer.get("precision", "32-true"))
    if dtype in ("bf16", "bfloat16", "fp16", "float16") and "mixed" not in precision:
        raise ConfigError(f"backbone.dtype={dtype} keeps the frozen weights in half precision, which needs autocast: "
                          f"set trainer.precision={'bf16' if dtype.startswith('b') else '16'}-mixed (now {precision})")
    if typed.stages is not None:
        _check_stages(cfg, typed)
    _check_monitor(cfg, typed)
    facts = facts_of(cfg)
    if typed.val is not None and "niqe" in typed.val.metrics:
        from lit_sr.metrics.niqe import size_problem

        problem = size_problem(facts.val_crop)
        if problem:
            raise ConfigError(f"val.metrics: {problem}")
    for key, node, target in targets:
        if isinstance(target, type) and issubclass(target, Checked):
            problem = target.requires(node, facts)
            if problem:
                raise ConfigError(problem)


def _check_monitor(cfg: DictConfig, typed: Any) -> None:
    """Every checkpoint's monitored value must be one the run logs."""
    monitors = [n.get("monitor") for n in (cfg.get("checkpoint") or {}).values() if n is not None]
    for monitor in monitors:
        if monitor:
            _check_one_monitor(cfg, typed, monitor)


def _check_one_monitor(cfg: DictConfig, typed: Any, monitor: str) -> None:
    from lit_sr.metrics.suite import METRIC_NAMES

    metric = str(monitor).removeprefix("val/")
    if str(monitor).startswith("val/") and metric in METRIC_NAMES:
        if typed.val is None:
            raise ConfigError(f"checkpoint monitor {monitor} needs validation metrics, but val is null: "
                              "add checkpoint=last (keeps last.ckpt only)")
        if metric not in typed.val.metrics:
            raise ConfigError(f"checkpoint monitor {monitor}, but val.metrics has no {metric}: add it to val.metrics, "
                              "or keep only last.ckpt with checkpoint=last")
    if monitor == "curve/hypervolume" and "fr_curve" not in (cfg.get("callbacks") or {}):
        raise ConfigError("checkpoint monitor curve/hypervolume needs the curve callback: add callbacks=fr_curve")
    if monitor == "curve/hypervolume":
        facts = facts_of(cfg)
        if not facts.noise_has_knob and not facts.endpoints:
            raise ConfigError("checkpoint monitor curve/hypervolume needs a model with a fidelity-realism control: "
                              "use noise=rgpa or noise=ldg, or model.endpoints")


def _check_stages(cfg: DictConfig, typed: Any) -> None:
    from lit_sr.systems.stages import MODULE_KEYS, check_against, check_sequence

    check_sequence(typed.stages)
    lora = typed.lora
    model = cfg.get("model") or {}
    check_against(
        typed.stages,
        denoiser=set(lora.denoiser or {}), vae=set(lora.vae or {}),
        terms={k for k, v in (typed.loss.terms or {}).items() if v is not None},
        modules={m for m, node in MODULE_KEYS.items() if cfg.get(node) is not None},
        endpoints=set(model.get("endpoints") or {}),
    )
