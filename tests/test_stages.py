"""Training stages: per-stage trainability, a stage-2 cross-attention LoRA, resume mid stage 2, config checks."""
from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lit_sr.config.compose import validate
from lit_sr.config.systems import build_system
from lit_sr.errors import ConfigError
from lit_sr.systems.stages import StageSchedule, parse_stages

STAGES = [
    {"name": "pixel", "steps": 1, "train_adapters": ["main"], "train_vae_adapters": ["main"]},
    {"name": "cross", "train_adapters": ["cross"], "freeze": ["main"],
     "add_adapters": {"cross": {"rank": 2, "target_modules": ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]}}},
]


def _cfg(make_cfg, stages=STAGES, *overrides: str):
    cfg = make_cfg("val.metrics=[psnr]", *overrides)
    with open_dict(cfg):
        cfg.stages = OmegaConf.create(stages)
    validate(cfg)
    return cfg


class _Record(L.Callback):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows.append({"step": trainer.global_step, "stage": pl_module.stage_index, "before": _snapshot(pl_module)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows[-1]["after"] = _snapshot(pl_module)


def _snapshot(system) -> dict[str, dict[str, torch.Tensor]]:
    g = system.generator
    return {
        "main": {n: p.detach().clone() for n, p in g.adapters.parameters("denoiser", "main").items()},
        "vae": {n: p.detach().clone() for n, p in g.adapters.parameters("vae", "main").items()},
        "cross": {n: p.detach().clone() for n, p in g.adapters.parameters("denoiser", "cross").items()},
    }


def _moved(row: dict, unit: str) -> bool:
    return any(not torch.equal(row["before"][unit][n], row["after"][unit][n]) for n in row["before"][unit])


def _fit(system, max_steps: int, root, ckpt_path=None) -> tuple[L.Trainer, _Record]:
    rec = _Record()
    g = torch.Generator().manual_seed(0)
    data = [{"lq": torch.rand(1, 3, 8, 8, generator=g), "hq": torch.rand(1, 3, 32, 32, generator=g)} for _ in range(8)]
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[rec], default_root_dir=root)
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=None), ckpt_path=ckpt_path)
    return trainer, rec


def test_stage_two_trains_only_the_new_cross_attention_lora(make_cfg, tiny_bb, tmp_path):
    system = build_system(_cfg(make_cfg), backbone=tiny_bb)
    cross = system.generator.adapters.parameters("denoiser", "cross")
    assert cross and all(".attn2." in n for n in cross)  # cross-attention layers only
    assert system.generator.adapters.active["denoiser"] == ["main"]  # stage 1: the stage-2 adapter is off
    trainer, rec = _fit(system, 3, tmp_path)
    assert trainer.global_step == 3 and [r["stage"] for r in rec.rows] == [0, 1, 1]
    for row in rec.rows[:1]:
        assert _moved(row, "main") and _moved(row, "vae") and not _moved(row, "cross")
    for row in rec.rows[1:]:
        assert not _moved(row, "main") and not _moved(row, "vae") and _moved(row, "cross")
    assert system.generator.adapters.active["denoiser"] == ["main", "cross"]  # the frozen stage-1 LoRA stays active
    groups = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert groups == ["denoiser:main", "vae:main", "denoiser:cross"]  # one layout for every stage
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.0, 0.0, system.lr]


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_resume_mid_stage_two_continues_stage_two(make_cfg, tiny_bb, _tiny_backbone_template, tmp_path):
    cfg = _cfg(make_cfg)
    first = build_system(cfg, backbone=tiny_bb)
    trainer, _ = _fit(first, 2, tmp_path / "a")  # stops after one stage-2 step
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = _snapshot(first)
    resumed = build_system(cfg, backbone=copy.deepcopy(_tiny_backbone_template))
    trainer2, rec = _fit(resumed, 4, tmp_path / "b", ckpt_path=str(ckpt))
    assert [(r["step"], r["stage"]) for r in rec.rows] == [(2, 1), (3, 1)]
    for unit in ("main", "vae", "cross"):  # restored exactly
        assert all(torch.equal(saved[unit][n], rec.rows[0]["before"][unit][n]) for n in saved[unit])
    for row in rec.rows:
        assert not _moved(row, "main") and not _moved(row, "vae") and _moved(row, "cross")
    assert trainer2.global_step == 4


def test_schedule_maps_iterations_to_stages():
    stages = parse_stages([{"name": "a", "steps": 2, "train_adapters": ["x"]},
                           {"name": "skip", "steps": 0, "train_adapters": ["x"]},
                           {"name": "b", "steps": 3, "train_adapters": ["y"]}])
    schedule = StageSchedule(stages)
    assert [schedule.index(i) for i in range(7)] == [0, 0, 2, 2, 2, 2, 2]  # the last stage continues
    assert StageSchedule([]).stages[0].implicit


@pytest.mark.parametrize("change,message", [
    ({"merge": ["main"]}, "stages\\[1\\].merge is not supported"),
    ({"train_adapters": ["nope"]}, "unknown denoiser adapter 'nope'"),
    ({"freeze": ["main", "cross"]}, "'cross' is both trained and frozen"),
    ({"losses": {"lpipz": 1.0}}, "unknown loss term 'lpipz'"),
    ({"blend": {"gamma": "uniform"}}, "needs model.endpoints"),
    ({"blend": {"gamma": 2}}, "stages\\[1\\].blend.gamma"),
    ({"train_modules": ["modulation"]}, "not a configured generator module"),
    ({"colour": 1}, "unknown config key 'stages\\[1\\].colour'"),
    ({"losses": {"mse": 0}}, "every weight is 0"),
])
def test_bad_stage_configs_fail_with_one_line(make_cfg, change, message):
    stages = copy.deepcopy(STAGES)
    stages[1].update(change)
    with pytest.raises(ConfigError, match=message):
        _cfg(make_cfg, stages)
    with pytest.raises(ConfigError, match="only the last stage"):
        _cfg(make_cfg, [{**STAGES[0], "steps": None}, STAGES[1]])


def test_ddp_is_told_about_unused_parameters_only_when_a_backward_can_miss_some(make_cfg, tiny_bb):
    from types import SimpleNamespace

    from lit_sr.config.build import trainer_kwargs

    system = build_system(_cfg(make_cfg), backbone=tiny_bb)  # two stages
    assert system.partial_backward
    plain = SimpleNamespace(partial_backward=False)

    def strategy(sys_, *overrides: str) -> str:
        return trainer_kwargs(make_cfg(*overrides), sys_)["strategy"]

    assert strategy(system, "trainer.strategy=ddp") == "ddp_find_unused_parameters_true"
    assert strategy(system, "trainer.devices=2") == "ddp_find_unused_parameters_true"  # auto → DDP on 2 devices
    assert strategy(system, "trainer=gpu", "trainer.num_nodes=2") == "ddp_find_unused_parameters_true"
    assert strategy(system) == "auto"  # one CPU device: no DDP at all
    assert strategy(system, "trainer.strategy=fsdp") == "fsdp"  # an explicit choice is kept
    assert strategy(plain, "trainer.strategy=ddp") == "ddp"


class _Metrics(L.pytorch.loggers.Logger):
    """Every metrics dict the trainer hands to its loggers, with the step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name, version = "record", 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def test_loggers_get_only_the_terms_computed_in_each_stage(make_cfg, tiny_bb, tmp_path):
    """A term switched off at a stage boundary is not repeated with its last value (IFCSR stage 2)."""
    stages = [{"name": "a", "steps": 2, "train_adapters": ["main"], "losses": {"mse": None}},
              {"name": "b", "train_adapters": ["main"], "losses": {"second": None}}]
    cfg = _cfg(make_cfg, stages, "+loss.terms.second._target_=losses.mse.MSELoss")
    system = build_system(cfg, backbone=tiny_bb)
    record = _Metrics()
    g = torch.Generator().manual_seed(0)
    data = [{"lq": torch.rand(1, 3, 8, 8, generator=g), "hq": torch.rand(1, 3, 32, 32, generator=g)} for _ in range(8)]
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=record, log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=None))
    train_rows = [(step, m) for step, m in record.rows if "train/loss" in m]
    assert [step for step, _ in train_rows] == [0, 1, 2, 3]
    for step, m in train_rows:
        assert ("train/mse" in m, "train/second" in m) == ((True, False) if step < 2 else (False, True)), (step, m)
        assert m["train/stage"] == (0.0 if step < 2 else 1.0)
