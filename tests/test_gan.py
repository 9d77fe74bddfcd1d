"""GAN term: the generator step never moves the discriminator, the discriminator step never moves the generator."""
from __future__ import annotations

import lightning as L
import torch

from lit_sr.config.systems import build_system


class _Watch(L.Callback):
    """Snapshots parameters at every optimizer step (generator first, then the discriminator)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        gan = pl_module.losses["gan"]
        self.events.append({
            "is_disc": any(p is q for p in optimizer.param_groups[0]["params"] for q in gan.own_parameters()),
            "disc": {n: p.detach().clone() for n, p in gan.discriminator.named_parameters()},
            "disc_grads": [p.grad for p in gan.own_parameters()],
            "gen": {n: p.detach().clone() for n, p in pl_module.generator.named_parameters() if p.requires_grad
                    or "lora_" in n},
            "gen_grads": [p.grad for n, p in pl_module.generator.named_parameters() if "lora_" in n],
        })


def test_generator_and_discriminator_updates_are_separate(make_cfg, tiny_bb, tmp_path):
    cfg = make_cfg("loss=codsr", "loss.terms.lpips=null", "loss.terms.vsd=null", "val.metrics=[psnr]")
    system = build_system(cfg, backbone=tiny_bb)
    watch = _Watch()
    data = [{"lq": torch.rand(2, 3, 8, 8), "hq": torch.rand(2, 3, 32, 32)} for _ in range(2)]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[watch],
                        default_root_dir=tmp_path)
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=None))
    assert trainer.global_step == 2  # the discriminator step does not count as a training step
    kinds = [e["is_disc"] for e in watch.events]
    assert kinds == [False, True, False, True]
    gen0, disc0, gen1 = watch.events[0], watch.events[1], watch.events[2]
    # Generator step: no gradient reached the discriminator and its weights did not move.
    assert all(g is None for g in gen0["disc_grads"])
    assert all(torch.equal(gen0["disc"][n], disc0["disc"][n]) for n in gen0["disc"])
    assert any(not torch.equal(gen0["gen"][n], disc0["gen"][n]) for n in gen0["gen"])  # the generator moved
    # Discriminator step: only the discriminator has gradients; the generator did not move.
    assert all(g is None for g in disc0["gen_grads"])
    assert all(torch.equal(disc0["gen"][n], gen1["gen"][n]) for n in disc0["gen"])
    assert any(not torch.equal(disc0["disc"][n], gen1["disc"][n]) for n in disc0["disc"])
    assert not any(p.requires_grad for p in system.losses["gan"].own_parameters())  # frozen outside its step
