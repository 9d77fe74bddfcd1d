"""Loss terms: one per file, each an ``nn.Module`` subclassing :class:`losses.base.LossTerm`."""
