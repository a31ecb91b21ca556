"""S3 endpoint and credentials, from the environment or the user's config file.

Sources, per field, the first one set wins:

1. environment: ``UAE_S3_ENDPOINT`` (``host:port``, an ``http://`` / ``https://`` prefix is
   accepted and sets ``secure``), ``UAE_S3_ACCESS_KEY``, ``UAE_S3_SECRET_KEY``,
   ``UAE_S3_SECURE`` (``1/true/yes/on`` or ``0/false/no/off``), ``UAE_S3_REGION``;
2. the ``s3`` section of the config file ``~/.config/uae-ray/config.yaml`` (path overridable
   with ``UAE_CONFIG``)::

       s3:
         endpoint: 127.0.0.1:8333
         access_key: ...
         secret_key: ...
         secure: false
         region: us-east-1

Credentials never come from code and are never logged: ``repr(S3Config)`` masks them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uae_ray.paths import running_stack_env

logger = logging.getLogger(__name__)

ENV_ENDPOINT = "UAE_S3_ENDPOINT"
ENV_ACCESS_KEY = "UAE_S3_ACCESS_KEY"
ENV_SECRET_KEY = "UAE_S3_SECRET_KEY"
ENV_SECURE = "UAE_S3_SECURE"
ENV_REGION = "UAE_S3_REGION"
ENV_CONFIG = "UAE_CONFIG"
DEFAULT_CONFIG_PATH = Path("~/.config/uae-ray/config.yaml")
DEFAULT_REGION = "us-east-1"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class StorageConfigError(RuntimeError):
    """The storage configuration is missing or malformed (never includes secret values)."""


def _mask(value: str | None, keep: int = 0) -> str:
    if not value:
        return "None"
    if keep and len(value) > 2 * keep:
        return repr(value[:keep] + "***")
    return "'***'"


@dataclass(frozen=True)
class S3Config:
    """Connection settings of one S3 endpoint.

    Attributes:
        endpoint: ``host:port`` without scheme, or ``None`` when not configured.
        access_key: Access key id (shown partly masked in ``repr``).
        secret_key: Secret key (always masked in ``repr``).
        secure: Use HTTPS.
        region: Region name sent with signed requests (any value works for SeaweedFS / MinIO;
            setting it avoids a bucket-location round trip).
    """

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = False
    region: str = DEFAULT_REGION

    def __repr__(self) -> str:
        return (
            f"S3Config(endpoint={self.endpoint!r}, access_key={_mask(self.access_key, keep=3)}, "
            f"secret_key={_mask(self.secret_key)}, secure={self.secure}, region={self.region!r})"
        )

    __str__ = __repr__

    @property
    def scheme(self) -> str:
        """``"https"`` or ``"http"``."""
        return "https" if self.secure else "http"

    def require_endpoint(self, uri: str | None = None) -> S3Config:
        """Return self, or raise a clear error when no endpoint is configured.

        Args:
            uri: The s3:// URI that needed the endpoint (named in the message).

        Raises:
            StorageConfigError: No endpoint configured.
        """
        if not self.endpoint:
            what = f"{uri}: " if uri else ""
            raise StorageConfigError(
                f"{what}no S3 endpoint configured; set {ENV_ENDPOINT} (host:port) and "
                f"{ENV_ACCESS_KEY}/{ENV_SECRET_KEY}, or the 's3' section of {config_path()}"
            )
        return self


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Path of the user config file (``UAE_CONFIG`` or ``~/.config/uae-ray/config.yaml``)."""
    env = os.environ if env is None else env
    return Path(env.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH).expanduser()


def _parse_bool(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise StorageConfigError(f"{source}: expected a boolean (true/false), got {value!r}")


def _split_endpoint(endpoint: str) -> tuple[str, bool | None]:
    """``"http://h:p/"`` -> ``("h:p", False)``; ``"h:p"`` -> ``("h:p", None)``."""
    endpoint = endpoint.strip()
    secure: bool | None = None
    lower = endpoint.lower()
    if lower.startswith("https://"):
        endpoint, secure = endpoint[8:], True
    elif lower.startswith("http://"):
        endpoint, secure = endpoint[7:], False
    endpoint = endpoint.rstrip("/")
    if "/" in endpoint:
        raise StorageConfigError(f"S3 endpoint must be host:port, got {endpoint!r}")
    return endpoint, secure


def _read_file_section(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml  # local import: only needed when a config file exists

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        # The YAML error text can quote file content (a secret); report only its position.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise StorageConfigError(f"{path}: cannot parse config file{where}") from None
    if not isinstance(data, dict):
        raise StorageConfigError(f"{path}: expected a mapping at the top level")
    section = data.get("s3") or {}
    if not isinstance(section, dict):
        raise StorageConfigError(f"{path}: section 's3' must be a mapping")
    return section


def load_s3_config(env: Mapping[str, str] | None = None) -> S3Config:
    """Read the S3 configuration (environment wins over the config file, field by field).

    Args:
        env: Environment mapping (default ``os.environ``).

    Returns:
        The configuration; ``endpoint`` is ``None`` when neither source sets one (the error is
        raised only when an s3:// URI is used, see :meth:`S3Config.require_endpoint`).

    Raises:
        StorageConfigError: Malformed config file or values.
    """
    env = os.environ if env is None else env
    path = config_path(env)
    section = _read_file_section(path)
    source = f"{path}: s3"

    def pick(env_name: str, key: str) -> Any:
        value = env.get(env_name)
        if value not in (None, ""):
            return value
        return section.get(key)

    endpoint_raw = pick(ENV_ENDPOINT, "endpoint")
    if not endpoint_raw:  # last: the local stack's settings, when one is up (any working folder)
        stack = running_stack_env(env)
        if stack.get(ENV_ENDPOINT):
            logger.debug("S3 settings of the running local stack")
            env = {**stack, **{k: v for k, v in env.items() if v not in (None, "")}}
            endpoint_raw = env[ENV_ENDPOINT]
    endpoint, scheme_secure = (None, None)
    if endpoint_raw:
        endpoint, scheme_secure = _split_endpoint(str(endpoint_raw))
    if env.get(ENV_SECURE) not in (None, ""):
        secure = _parse_bool(env[ENV_SECURE], ENV_SECURE)
    elif scheme_secure is not None:
        secure = scheme_secure
    elif "secure" in section:
        secure = _parse_bool(section["secure"], f"{source}.secure")
    else:
        secure = False
    access = pick(ENV_ACCESS_KEY, "access_key")
    secret = pick(ENV_SECRET_KEY, "secret_key")
    region = pick(ENV_REGION, "region") or DEFAULT_REGION
    return S3Config(
        endpoint=endpoint or None,
        access_key=None if access is None else str(access),
        secret_key=None if secret is None else str(secret),
        secure=secure,
        region=str(region),
    )
