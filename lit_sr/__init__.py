"""lit_sr."""
