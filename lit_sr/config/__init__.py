"""The entry layer's library: compose and validate config, build objects from it, reload trained models."""
