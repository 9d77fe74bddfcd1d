"""Errors that end a run with one clear line instead of a traceback."""


class LitSRError(Exception):
    """Base class: the CLI entry points print ``error: <message>`` and exit with ``exit_code`` (2)."""

    exit_code = 2


class ConfigError(LitSRError, ValueError):
    """A config key, value or component combination that cannot work (a bad value, hence a ValueError too)."""


class WeightsError(LitSRError):
    """A weight directory or file that is missing or does not fit the model."""


class ImageLoadError(LitSRError):
    """An image file that cannot be decoded or is unusable (too small, empty)."""


class FieldError(ValueError):
    """A bad value of one field of a typed config node; the config layer adds the node's key.

    Raised by the ``__post_init__`` checks of config dataclasses with a message that reads after
    the key, so the one-line error names the full key: ``optim.lr must be > 0, got -1.0``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message

    def at(self, node: str) -> str:
        """The message with the node's key in front of the field (``stages[1].merge is ...``)."""
        return f"{node}.{self.field} {self.message}" if node else str(self)

