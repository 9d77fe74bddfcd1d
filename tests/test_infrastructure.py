"""Infrastructure built from config: optimizers, schedules, accumulation, EMA, checkpoint presets, systems."""
from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lit_sr.config.build import build_callbacks
from lit_sr.config.compose import CONF_DIR
from lit_sr.config.systems import build_system
from lit_sr.errors import ConfigError
from lit_sr.model.adapters import OSEDIFF_VAE_TARGETS
from lit_sr.model.families.sd import UNetDenoiser
from lit_sr.model.families.sd3 import MMDiTDenoiser

DETERMINISTIC = ["noise=uniform", "loss=mse", "val.metrics=[psnr]"]  # no noise drawn anywhere in a step


def _fit(system, batches, max_steps, callbacks=(), tmp_path=None) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(system, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def _trained(system) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in system.generator.trainable_state_dict().items()}


@pytest.mark.parametrize("backbone,denoiser", [("tiny", UNetDenoiser), ("tiny_sd3", MMDiTDenoiser)])
def test_lora_target_lists_are_written_once(make_cfg, backbone, denoiser):
    cfg = make_cfg(f"backbone={backbone}")  # each family's backbone YAML selects its preset file
    assert list(cfg.lora_targets.denoiser) == denoiser.lora_presets["all"]
    assert list(cfg.lora_targets.cross_attention) == denoiser.lora_presets["cross_attention"]
    assert list(cfg.lora_targets.vae) == OSEDIFF_VAE_TARGETS
    raw = "\n".join(p.read_text() for p in CONF_DIR.rglob("*.yaml") if p.parent.name != "lora_targets")
    assert "ff.net.0.proj" not in raw and "add_k_proj" not in raw  # every other YAML refers to ${lora_targets.*}


def test_accumulating_two_batches_of_two_equals_one_batch_of_four(make_cfg, tiny_bb):
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(4, 3, 32, 32, generator=g)
    lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="area")
    # SGD: the update is the (clipped) gradient itself, so equal updates mean equal accumulated gradients.
    sgd = [*DETERMINISTIC, "optim.lr=0.5", "optim.grad_clip=0.05", "optim.optimizer._target_=torch.optim.SGD",
           "~optim.optimizer.betas"]
    torch.manual_seed(0)  # the same LoRA initialisation in both
    one = build_system(make_cfg(*sgd), backbone=copy.deepcopy(tiny_bb))
    torch.manual_seed(0)
    two = build_system(make_cfg(*sgd, "optim.accumulate_grad_batches=2"), backbone=copy.deepcopy(tiny_bb))
    start = _trained(one)
    assert all(torch.equal(v, _trained(two)[k]) for k, v in start.items())
    t1 = _fit(one, [{"lq": lq, "hq": hq}], max_steps=1)
    t2 = _fit(two, [{"lq": lq[:2], "hq": hq[:2]}, {"lq": lq[2:], "hq": hq[2:]}], max_steps=1)
    assert t1.global_step == t2.global_step == 1  # one optimizer step each; the second took two batches
    a, b = _trained(one), _trained(two)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the step did something
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


class _LRs(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_cosine_schedule_scales_each_stage_learning_rate(make_cfg, tiny_bb):
    stages = [{"name": "a", "steps": 2, "train_adapters": ["main"]},
              {"name": "b", "train_vae_adapters": ["main"], "lr": 2e-3}]
    cfg = make_cfg(*DETERMINISTIC, "scheduler=cosine", "trainer.max_steps=4", "optim.lr=1e-3")
    with open_dict(cfg):
        cfg.stages = OmegaConf.create(stages)
    system = build_system(cfg, backbone=tiny_bb)
    assert isinstance(system.optimizer_factory.func, type) and system.optimizer_factory.func is torch.optim.AdamW
    record = _LRs()
    batch = {"lq": torch.rand(1, 3, 8, 8), "hq": torch.rand(1, 3, 32, 32)}
    _fit(system, [batch] * 4, max_steps=4, callbacks=[record])
    factor = [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    units = system.plan.trained_units
    for step, lrs in enumerate(record.lrs):
        stage_lr = 1e-3 if step < 2 else 2e-3
        for unit, lr in zip(units, lrs):
            trained = unit == ("denoiser:main" if step < 2 else "vae:main")
            assert lr == pytest.approx(stage_lr * factor[step] if trained else 0.0, rel=1e-6), (step, unit)


def test_optimizers_come_from_config(make_cfg, tiny_bb):
    cfg = make_cfg(*DETERMINISTIC, "optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas",
                   "+optim.optimizer.momentum=0.9")
    fresh = copy.deepcopy(tiny_bb)
    system = build_system(cfg, backbone=tiny_bb)
    opts, _ = system.configure_optimizers()
    assert isinstance(opts[0], torch.optim.SGD) and opts[0].defaults["momentum"] == 0.9
    vsd = build_system(make_cfg("loss=osediff_vsd", "loss.terms.lpips=null", "val.metrics=[psnr]",
                                "loss.terms.vsd.optimizer.lr=3e-4"), backbone=fresh)
    opts, _ = vsd.configure_optimizers()
    fake = opts[1]
    assert isinstance(fake, torch.optim.AdamW) and fake.defaults["lr"] == 3e-4 and fake.defaults["weight_decay"] == 1e-2
    with pytest.raises(ConfigError, match="unknown config key 'optim.optimizer.momentun'"):
        make_cfg("+optim.optimizer.momentun=0.9")


def test_ema_averages_only_the_trained_weights_and_exports_the_average(make_cfg, tiny_bb, tmp_path):
    from callbacks.ema import TrainedWeightsEMA

    system = build_system(make_cfg(*DETERMINISTIC, "optim.lr=1e-2"), backbone=tiny_bb)
    ema = TrainedWeightsEMA(decay=0.5)
    live: list[list[torch.Tensor]] = []

    class _Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            live.append([p.detach().clone() for p in pl_module.averaged_parameters()])

    batch = {"lq": torch.rand(2, 3, 8, 8), "hq": torch.rand(2, 3, 32, 32)}
    _fit(system, [batch] * 3, max_steps=3, callbacks=[_Record(), ema], tmp_path=tmp_path)
    n_trained = sum(p.numel() for p in system.averaged_parameters())
    assert sum(t.numel() for t in ema.average) == n_trained  # no copy of the base
    expected = live[0]  # AveragedModel: the first update copies, later ones blend with decay 0.5
    for params in live[1:]:
        expected = [0.5 * e + 0.5 * p for e, p in zip(expected, params)]
    for got, want, last in zip(system.averaged_parameters(), expected, live[-1]):
        torch.testing.assert_close(got.detach(), want)  # on_train_end copied the average in: export sees it
    assert any(not torch.equal(w, last) for w, last in zip(expected, live[-1]))


def test_checkpoint_presets_and_monitor_checks(make_cfg):
    hv = make_cfg("checkpoint=hypervolume", "callbacks=fr_curve", "noise=rgpa", "data.val_crop=192")
    ckpt = next(c for c in build_callbacks(hv) if isinstance(c, L.pytorch.callbacks.ModelCheckpoint))
    assert ckpt.monitor == "curve/hypervolume" and ckpt.mode == "max"
    assert make_cfg("checkpoint.last.every_n_train_steps=50").checkpoint.last.every_n_train_steps == 50
    with pytest.raises(ConfigError, match="needs the curve callback: add callbacks=fr_curve"):
        make_cfg("checkpoint=hypervolume")
    with pytest.raises(ConfigError, match="val.metrics has no psnr"):
        make_cfg("val.metrics=[ssim]")
    with pytest.raises(ConfigError, match="checkpoint=last"):
        make_cfg("val=null")
    assert list(make_cfg("val=null", "checkpoint=last").checkpoint) == ["last"]
    with pytest.raises(ConfigError, match="noise=rgpa or noise=ldg"):
        make_cfg("callbacks=fr_curve", "noise=uniform", "callbacks.fr_curve.without_control=error")  # no knob to sweep
    assert make_cfg("callbacks=fr_curve", "noise=uniform").callbacks.fr_curve.without_control == "skip"  # the default


def test_the_system_is_chosen_by_config(make_cfg, tmp_path):
    assert make_cfg().system._target_.endswith("sr_system")
    mem = make_cfg("experiment=mem", f"mem.generator_export={tmp_path}")
    assert mem.system._target_.endswith("mem_system") and "mem_export" in mem.callbacks
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        make_cfg("experiment=nope")


def test_train_help_lists_groups_choices_and_defaults(capsys):
    import train

    assert train.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python train.py")
    for group in (p.name for p in CONF_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml"))):
        assert f"  {group}:" in text, group
    assert "*tiny16 " in text and " sd21 " in text and " sd3 " in text and " uniform " in text and "*rgpa " in text
    assert "CODSR's region-adaptive generative prior activation" in text  # the choice's own summary


def test_train_cfg_prints_the_composed_config_with_overrides(capsys):
    import train

    assert train.main(["--cfg", "experiment=rcod", "backbone.vision_encoder=true", "trainer.max_steps=7"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.trainer.max_steps == 7 and cfg.noise._target_.endswith("LDGNoise")
    assert train.main(["--cfg", "noise=nope"]) == 2
    assert "unknown noise 'nope'" in capsys.readouterr().err


def test_values_with_equals_signs_and_num_nodes_need_no_quoting(tmp_path):
    from lit_sr.config.compose import compose

    cfg = compose(["ckpt_path=runs/x/checkpoints/epoch=0-step=80.ckpt", "trainer.num_nodes=2", "run_dir=a'b=c"])
    assert cfg.ckpt_path == "runs/x/checkpoints/epoch=0-step=80.ckpt"
    assert cfg.run_dir == "a'b=c" and cfg.trainer.num_nodes == 2
    (tmp_path / "a").mkdir(), (tmp_path / "b=1").mkdir()
    dirs = compose([f"data.train_dirs=[{tmp_path}/a,'{tmp_path}/b=1']"]).data.train_dirs  # lists stay Hydra syntax
    assert dirs == [f"{tmp_path}/a", f"{tmp_path}/b=1"]


def test_a_step_skipped_by_the_nan_guard_does_not_advance_the_lr_schedule(make_cfg, tiny_bb):
    system = build_system(make_cfg(*DETERMINISTIC, "scheduler=cosine", "trainer.max_steps=3", "optim.lr=1e-3"),
                          backbone=tiny_bb)
    record = _LRs()
    good = {"lq": torch.rand(1, 3, 8, 8), "hq": torch.rand(1, 3, 32, 32)}
    bad = {"lq": good["lq"], "hq": torch.full_like(good["hq"], float("nan"))}  # a NaN loss: the step is skipped
    trainer = _fit(system, [good, bad, bad, good, good], max_steps=3, callbacks=[record])
    assert system.guard.skipped == 2 and trainer.global_step == 3
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 3  # one schedule step per optimizer step taken, none for the skipped ones
    lr = [lrs[0] for lrs in record.lrs]  # before each of the 5 batches
    factor = [0.5 * (1 + math.cos(math.pi * s / 3)) for s in range(3)]
    assert lr == pytest.approx([1e-3 * f for f in (factor[0], factor[1], factor[1], factor[1], factor[2])], rel=1e-6)
