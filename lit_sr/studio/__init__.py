"""Interactive fidelity–realism page."""
