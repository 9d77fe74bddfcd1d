"""Errors that end a run with one clear line instead of a traceback."""


class LitSRError(Exception):
    """Base class: the CLI entry points print ``error: <message>`` and exit with status 2."""


class ConfigError(LitSRError):
    """A config key, value or component combination that cannot work."""


class WeightsError(LitSRError):
    """A weight directory or file that is missing or does not fit the model."""


class ImageLoadError(LitSRError):
    """An image file that cannot be decoded or is unusable (too small, empty)."""
