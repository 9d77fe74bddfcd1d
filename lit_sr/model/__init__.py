"""The model side: plain nn.Modules and their file formats (no Lightning systems, no callbacks)."""
