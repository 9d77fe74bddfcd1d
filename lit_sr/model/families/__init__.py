"""Backbone families: one file each (denoiser class, loader, tiny builder), one ``conf/backbone`` YAML
per loader and one ``conf/lora_targets`` preset per family (``docs/extending.md``)."""
