"""Noise strategies: how the timestep is chosen, what the UNet sees, and how ε̂ becomes ẑ."""
from lit_sr.model.noise.base import NoiseContext, NoiseStrategy

__all__ = ["NoiseContext", "NoiseStrategy"]
