"""Training systems: LightningModules that wire a model, its losses and optimizers, stage by stage."""
