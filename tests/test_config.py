"""Config: every YAML composes and instantiates; bad keys, values and names fail with one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lit_sr.config.build import build_component, build_datamodule, build_generator, build_losses
from lit_sr.config.compose import CONF_DIR, compose
from lit_sr.errors import ConfigError, WeightsError

ROOT = Path(__file__).resolve().parent.parent
# Choices that only make sense together with another setting (checked by their own tests).
NEEDS = {("conditioning", "vpim"): ["backbone.vision_encoder=true"],
         ("callbacks", "fr_curve"): ["noise=rgpa", "data.val_crop=192"],
         ("checkpoint", "hypervolume"): ["callbacks=fr_curve", "noise=rgpa", "data.val_crop=192"],
         ("checkpoint", "last"): ["val=null", "callbacks=default"],
         ("noise", "uniform"): ["callbacks=default"],
         ("data", "shards"): ["data.shards=/nonexistent/shards"]}  # opened in setup (tests/test_shards.py)
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _target_class(node):
    """The class a ``_target_`` node names (None for a factory function)."""
    import importlib

    module, _, name = str(node["_target_"]).rpartition(".")
    target = getattr(importlib.import_module(module), name)
    return target if isinstance(target, type) else None


def _check_built(node, built) -> None:
    """A built component is an instance of the class its node names, or a factory's non-None result."""
    cls = _target_class(node)
    assert isinstance(built, cls) if cls is not None else built is not None, (node["_target_"], type(built))


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in _choices(g)
                                          if g not in ("experiment", "extract")])
def test_every_group_yaml_composes_and_instantiates(group, choice, tiny_bb, tmp_path, request):
    """Every choice of every group composes and builds what its file describes (one property checked per group)."""
    overrides = [f"{group}={choice}", *NEEDS.get((group, choice), [])]
    if group == "backbone" and not choice.startswith("tiny"):
        with pytest.raises(ConfigError, match="backbone.path: directory not found: /nonexistent/sd"):
            compose([*overrides, "backbone.path=/nonexistent/sd"])  # checked before anything is built
        overrides.append(f"{group}.path={tmp_path}")
    cfg = compose(overrides)
    node = cfg.get(group)
    if group == "backbone":
        if choice.startswith("tiny"):
            backbone = build_component(node)
            assert backbone.denoiser is not None and backbone.latent_channels == (4 if choice == "tiny" else 16)
        else:
            with pytest.raises(WeightsError, match="'(unet|transformer)' folder not found"):
                build_component(node)  # an existing directory without the diffusers layout
    elif group == "lora":
        assert set(build_generator(cfg, tiny_bb).denoiser_adapters) == set(node.denoiser)
    elif group == "lora_targets":  # every listed layer name exists in the family's tiny denoiser
        backbone = request.getfixturevalue("tiny_sd3_bb" if choice == "mmdit" else "tiny_bb")
        names = [n for n, _ in backbone.denoiser.net.named_modules()]
        for target in [*node.denoiser, *node.cross_attention]:
            assert any(n == target or n.endswith("." + target) for n in names), (choice, target)
    elif group == "loss":
        terms = build_losses(cfg)
        assert terms and set(terms) == {k for k, v in node.terms.items() if v is not None}
        for name, term in terms.items():
            _check_built(node.terms[name], term)
    elif group in ("data", "degradation"):
        datamodule = build_datamodule(cfg)
        _check_built(cfg.data, datamodule)
        _check_built(cfg.degradation, datamodule.degradation)
        assert datamodule.scale == cfg.degradation.scale and datamodule.crop_size == cfg.data.crop_size
        if group == "degradation" and "stages" in node:
            assert [s.name for s in datamodule.degradation.stages] == [s.name for s in node.stages]
    elif group == "system":
        from lit_sr.config.systems import build_system

        if choice in ("mem", "distill"):  # need a trained generator: their experiment's node (test_mem, test_distill)
            with pytest.raises(ConfigError, match={"mem": "experiment=mem", "distill": "experiment=distill_vae"}[choice]):
                build_system(cfg, backbone=tiny_bb)
        else:
            system = build_system(cfg, backbone=tiny_bb)
            assert system.generator is not None and set(system.losses) == set(build_losses(cfg))
    elif group == "logger":
        import importlib.util

        from lit_sr.config.build import build_loggers

        missing = [pkg for pkg in ("wandb", "mlflow") if choice == pkg and importlib.util.find_spec(pkg) is None]
        if missing:  # an optional backend that is not installed: one line saying so
            with pytest.raises(ConfigError, match=f"logger.{choice}: .*{missing[0]}"):
                build_loggers(cfg)
        else:
            loggers = build_loggers(cfg)
            nodes = [n for n in (node or {}).values() if n is not None]
            assert len(loggers) == len(nodes) == {"none": 0, "default": 2}.get(choice, 3)  # none: no logger at all
            for sub, built in zip(nodes, loggers):
                _check_built(sub, built)
    elif group == "trainer":
        import lightning

        kwargs = OmegaConf.to_container(node)
        if kwargs["accelerator"] == "gpu" and not torch.cuda.is_available():
            with pytest.raises(lightning.fabric.utilities.exceptions.MisconfigurationException, match="gpu"):
                lightning.Trainer(**kwargs, logger=False, enable_checkpointing=False)
            kwargs.update(accelerator="cpu", devices=1)  # every other argument still builds a Trainer here
        trainer = lightning.Trainer(**kwargs, logger=False, enable_checkpointing=False)
        assert trainer.max_steps == node.max_steps and trainer.precision == node.precision
    elif group == "scheduler":  # `# @package optim.scheduler`: a partial taking the optimizer
        factory = build_component(cfg.optim.scheduler)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        schedule = factory(optimizer)
        warmup = int(cfg.optim.scheduler.num_warmup_steps)
        rates = []
        for _ in range(warmup + 2):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert rates[warmup] == pytest.approx(1.0, abs=1e-3)  # the full rate when the warm-up ends
        if warmup:
            assert rates[0] == 0.0 and rates[warmup // 2] == pytest.approx(0.5, abs=0.01)
    elif group == "tmg":  # `# @package _global_`: text conditioning, the CoMat term and the mask cache
        assert node is None and cfg.conditioning._target_.endswith("TextConditioner")
        assert type(build_losses(cfg)["comat"]).__name__ == "CoMatLoss" and cfg.data.mask_cache
    elif node is not None and "_target_" in node:
        _check_built(node, build_component(node))
    else:  # groups of nested component nodes (callbacks, checkpoint)
        subs = {k: v for k, v in node.items() if v is not None and "_target_" in v}
        assert subs and len(subs) == len(node), f"{group}={choice}: every entry is a component node"
        for sub in subs.values():
            _check_built(sub, build_component(sub))


def test_unknown_key_fails_with_one_line_naming_it():
    with pytest.raises(ConfigError, match="'trainer.max_stepz'"):
        compose(["trainer.max_stepz=3"])
    with pytest.raises(ConfigError, match="'noise.timestepz'"):
        compose(["+noise.timestepz=3"])


def test_bad_value_fails_naming_key():
    with pytest.raises(ConfigError, match="data.batch_size"):
        compose(["data.batch_size=abc"])
    with pytest.raises(ConfigError, match="optim.lr"):
        compose(["optim.lr=-1"])


def test_unknown_component_name_lists_choices():
    with pytest.raises(ConfigError, match="unknown noise 'bogus'; available: .*uniform"):
        compose(["noise=bogus"])


def test_missing_required_value_names_key():
    with pytest.raises(ConfigError, match="backbone.path"):
        compose(["backbone=sd21"])


def _run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.parametrize("args,expected", [
    (["trainer.max_stepz=3"], "unknown config key 'trainer.max_stepz'"),
    (["noise=bogus"], "unknown noise 'bogus'"),
    (["backbone=sd21", "backbone.path=/no/such/dir"], "backbone.path: directory not found: /no/such/dir"),
])
def test_cli_errors_are_one_line(args, expected):
    proc = _run_train(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in proc.stderr


def test_a_missing_value_hint_names_the_key_that_works():
    """The hint for backbone=sd21 without a path is a key that composes (not backbone.backbone.path)."""
    with pytest.raises(ConfigError) as info:
        compose(["backbone=sd21"])
    assert str(info.value) == "missing value for 'backbone.path' (set it on the command line: backbone.path=...)"
    with pytest.raises(ConfigError, match="backbone.path: directory not found"):  # following the hint gets further
        compose(["backbone=sd21", "backbone.path=/no/such/dir"])


def test_every_target_the_configs_name_is_trusted_when_a_model_folder_is_loaded():
    """A stored config may name what conf/ names (schedulers from diffusers included), nothing else:
    the allow-list compares the resolved object, so a trusted prefix is not enough."""
    import yaml

    from lit_sr.config.loading import is_trusted_target

    targets = set()

    def walk(node):
        if isinstance(node, dict):
            if "_target_" in node:
                targets.add(str(node["_target_"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in CONF_DIR.rglob("*.yaml"):
        if "extract" not in path.relative_to(CONF_DIR).parts[0]:  # the extraction job's config is never stored
            walk(yaml.safe_load(path.read_text()))
    assert "diffusers.optimization.get_cosine_schedule_with_warmup" in targets
    assert {t for t in targets if not is_trusted_target(t)} == set()
    for bad in ("os.system", "lit_sr.config.run.os.system", "lit_sr.config.loading.torch.load", "builtins.eval",
                "lit_sr.model.export.shutil.rmtree", "torch.optim.Optimizer.__init__", "lit_sr.nope.Missing"):
        assert not is_trusted_target(bad), bad
