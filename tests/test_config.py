"""Config: every YAML composes and instantiates; bad keys, values and names fail with one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in _choices(g)
                                          if g not in ("experiment", "extract")])
def test_every_group_yaml_composes_and_instantiates(group, choice, tiny_bb, tmp_path):
    overrides = [f"{group}={choice}", *NEEDS.get((group, choice), [])]
    if group == "backbone" and not choice.startswith("tiny"):
        with pytest.raises(ConfigError, match="backbone.path: directory not found: /nonexistent/sd"):
            compose([*overrides, "backbone.path=/nonexistent/sd"])  # checked before anything is built
        overrides.append(f"{group}.path={tmp_path}")
    cfg = compose(overrides)
    node = cfg.get(group)
    if group == "backbone":
        if choice.startswith("tiny"):
            assert build_component(node).denoiser is not None
        else:
            with pytest.raises(WeightsError, match="'(unet|transformer)' folder not found"):
                build_component(node)  # an existing directory without the diffusers layout
    elif group == "lora":
        assert build_generator(cfg, tiny_bb).denoiser_adapters
    elif group == "loss":
        assert build_losses(cfg)
    elif group in ("data", "degradation"):
        assert build_datamodule(cfg) is not None
    elif group == "system":
        from lit_sr.config.systems import build_system

        if choice in ("mem", "distill"):  # need a trained generator: their experiment's node (test_mem, test_distill)
            with pytest.raises(ConfigError, match={"mem": "experiment=mem", "distill": "experiment=distill_vae"}[choice]):
                build_system(cfg, backbone=tiny_bb)
        else:
            assert build_system(cfg, backbone=tiny_bb).generator is not None
    elif group == "logger":
        import importlib.util

        from lit_sr.config.build import build_loggers

        missing = [pkg for pkg in ("wandb", "mlflow") if choice == pkg and importlib.util.find_spec(pkg) is None]
        if missing:  # an optional backend that is not installed: one line saying so
            with pytest.raises(ConfigError, match=f"logger.{choice}: .*{missing[0]}"):
                build_loggers(cfg)
        else:
            assert all(lg is not None for lg in build_loggers(cfg))
    elif group == "trainer":
        import lightning

        kwargs = OmegaConf.to_container(node)
        if kwargs["accelerator"] == "cpu":
            assert lightning.Trainer(**kwargs, logger=False, enable_checkpointing=False).max_steps > 0
    elif node is not None and "_target_" in node:
        assert build_component(node) is not None
    elif node is not None:  # groups of nested component nodes (callbacks, tmg snippets)
        for sub in node.values():
            if sub is not None and "_target_" in sub:
                assert build_component(sub) is not None


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
