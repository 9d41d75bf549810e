"""The configuration printed without secrets: passwords in URLs and the values of the variables
the ``*_env`` keys name are masked; ``secret_status`` says which of those variables are set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from nexus_core.config.schema import NexusConfig


def mask_url(url: str) -> str:
    """The URL with any user-info password replaced by ``***``."""
    if "@" not in url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def secret_status(
    config: NexusConfig, *, environ: Mapping[str, str] | None = None
) -> dict[str, bool]:
    """Each ``*_env`` key that names a variable, by key path, and whether the variable is set."""
    environ = os.environ if environ is None else environ
    status: dict[str, bool] = {}
    for index, backend in enumerate(config.backends):
        if backend.api_key_env:
            status[f"backends[{index}].api_key_env"] = bool(environ.get(backend.api_key_env))
    for index, key in enumerate(config.auth.keys):
        status[f"auth.keys[{index}].key_env"] = bool(environ.get(key.key_env))
    if config.auth.admin_key_env:
        status["auth.admin_key_env"] = bool(environ.get(config.auth.admin_key_env))
    if config.state.redis_url_env:
        status["state.redis_url_env"] = bool(environ.get(config.state.redis_url_env))
    return status


def mask_secrets(
    config: NexusConfig, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The config as plain JSON-ready data for printing, with no secret in it.

    The config only holds the *names* of environment variables, so the result stays a valid
    configuration; as a second line of defence, passwords in URLs and the value of every
    referenced secret variable, wherever it appears in a string, are replaced by ``***``.
    """
    environ = os.environ if environ is None else environ
    names = [
        *(b.api_key_env for b in config.backends),
        *(k.key_env for k in config.auth.keys),
        config.auth.admin_key_env,
        config.state.redis_url_env,
    ]
    # Short values are left alone: masking every "on" or "1" would garble the output.
    secrets = {environ[name] for name in names if name and len(environ.get(name, "")) >= 8}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "***")
            return mask_url(value)
        return value

    result: dict[str, Any] = clean(config.model_dump(mode="json"))
    return result
