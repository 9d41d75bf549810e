"""The two exceptions of configuration: ``ConfigError`` (cannot be used) and ``ConfigKeyError``
(raised inside a model validator to say which key below the model is wrong)."""

from __future__ import annotations


class ConfigKeyError(ValueError):
    """A cross-field problem found by a model validator, located at ``key`` below that model.

    Pydantic reports model-level errors at the model's own location; carrying the key lets the
    message name ``backends[1].name`` rather than ``(top level)``.
    """

    def __init__(self, message: str, *key: str | int) -> None:
        super().__init__(message)
        self.key: tuple[str | int, ...] = key


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
