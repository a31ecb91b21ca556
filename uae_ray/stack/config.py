"""Configuration of the local stack (Ray head, Triton server, S3 server, DICOMweb PACS).

Every field has a default, may be set in the optional YAML file ``cluster/local/stack.yaml``
(path overridable with ``UAE_STACK_CONFIG``; keys are the field names below) and in the
environment (variable names in :data:`ENV_VARS`). The environment wins over the file, field by
field.

S3 credentials come, first one set wins, from ``UAE_S3_ACCESS_KEY`` / ``UAE_S3_SECRET_KEY``, the
``s3`` section of the user config file ``~/.config/uae-ray/config.yaml`` (path overridable with
``UAE_CONFIG``), or the run-dir file ``s3.env`` that ``stack up`` writes (mode 0600) when none
were given. The PACS (Orthanc) user and password come the same way from ``UAE_PACS_USER`` /
``UAE_PACS_PASSWORD``, the ``pacs`` section (``user``, ``password``) of the user config file, or
the run-dir file ``pacs.env``. Credentials are never read from ``stack.yaml`` (a repository
file) and never logged: ``repr(StackConfig)`` masks them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from uae_ray.paths import default_stack_dir

logger = logging.getLogger(__name__)

#: Root of the source checkout (the package is installed editable from it).
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STACK_YAML = REPO_ROOT / "cluster" / "local" / "stack.yaml"
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repo"
DEFAULT_USER_CONFIG = Path("~/.config/uae-ray/config.yaml")
S3_ENV_FILE = "s3.env"

ENV_STACK_CONFIG = "UAE_STACK_CONFIG"
ENV_USER_CONFIG = "UAE_CONFIG"
ENV_ACCESS_KEY = "UAE_S3_ACCESS_KEY"
ENV_SECRET_KEY = "UAE_S3_SECRET_KEY"
ENV_PACS_USER = "UAE_PACS_USER"
ENV_PACS_PASSWORD = "UAE_PACS_PASSWORD"

#: Field name -> environment variable. Every field except the credentials may also be a
#: key of ``stack.yaml``.
ENV_VARS: dict[str, str] = {
    "run_dir": "UAE_STACK_DIR",
    "host": "UAE_STACK_HOST",
    "ray_port": "UAE_RAY_PORT",
    "ray_dashboard_port": "UAE_RAY_DASHBOARD_PORT",
    "ray_client_server_port": "UAE_RAY_CLIENT_SERVER_PORT",
    "ray_dashboard_agent_port": "UAE_RAY_DASHBOARD_AGENT_PORT",
    "ray_num_cpus": "UAE_RAY_NUM_CPUS",
    "ray_object_store_mb": "UAE_RAY_OBJECT_STORE_MB",
    "triton_http_port": "UAE_TRITON_HTTP_PORT",
    "triton_grpc_port": "UAE_TRITON_GRPC_PORT",
    "triton_metrics_port": "UAE_TRITON_METRICS_PORT",
    "model_repository": "UAE_MODEL_REPOSITORY",
    "triton_model_config": "UAE_TRITON_MODEL_CONFIG",
    "checkpoint": "UAE_CHECKPOINT",
    "s3_port": "UAE_S3_PORT",
    "s3_grpc_port": "UAE_S3_GRPC_PORT",
    "s3_master_port": "UAE_S3_MASTER_PORT",
    "s3_master_grpc_port": "UAE_S3_MASTER_GRPC_PORT",
    "s3_volume_port": "UAE_S3_VOLUME_PORT",
    "s3_volume_grpc_port": "UAE_S3_VOLUME_GRPC_PORT",
    "s3_filer_port": "UAE_S3_FILER_PORT",
    "s3_filer_grpc_port": "UAE_S3_FILER_GRPC_PORT",
    "pacs_http_port": "UAE_PACS_HTTP_PORT",
    "pacs_stable_age_s": "UAE_PACS_STABLE_AGE_S",
    "start_timeout_s": "UAE_STACK_START_TIMEOUT_S",
    "stop_timeout_s": "UAE_STACK_STOP_TIMEOUT_S",
    "s3_access_key": ENV_ACCESS_KEY,
    "s3_secret_key": ENV_SECRET_KEY,
    "pacs_user": ENV_PACS_USER,
    "pacs_password": ENV_PACS_PASSWORD,
}
_SECRET_FIELDS = {"s3_access_key", "s3_secret_key", "pacs_user", "pacs_password"}


class StackError(RuntimeError):
    """The local stack cannot be configured, started, or reached (never includes secrets)."""


@dataclass(frozen=True)
class StackConfig:
    """Where the local stack runs and on which loopback ports.

    Attributes:
        run_dir: Folder for pid files, logs, S3 data and generated credentials.
        host: Address every service binds to and clients use (loopback only).
        ray_port: Ray GCS port (``ray start --port``; 6380 avoids clashes with Redis/Ray 6379).
        ray_dashboard_port: Ray dashboard / job submission HTTP port.
        ray_client_server_port: Ray client server port (``ray://``).
        ray_dashboard_agent_port: HTTP port of the per-node dashboard agent.
        ray_num_cpus: CPUs the head node advertises (``None``: all cores).
        ray_object_store_mb: Object store size in MiB (``None``: Ray's default).
        triton_http_port: Triton HTTP/REST port (``UAE_TRITON_URL``).
        triton_grpc_port: Triton gRPC port.
        triton_metrics_port: Triton Prometheus metrics port.
        model_repository: Triton model repository (default: the repository's ``model_repo/``).
        triton_model_config: Alternative model config name (``--model-config-name``, e.g.
            ``"gpu"`` for ``model_repo/uae_embedder/configs/gpu.pbtxt``); ``None``: config.pbtxt.
        checkpoint: Checkpoint the Triton model loads (``None``: the shipped default weights).
        s3_port: S3 API port of the SeaweedFS gateway (``UAE_S3_ENDPOINT``).
        s3_grpc_port: gRPC port of the S3 gateway.
        s3_master_port / s3_master_grpc_port: SeaweedFS master ports.
        s3_volume_port / s3_volume_grpc_port: SeaweedFS volume server ports.
        s3_filer_port / s3_filer_grpc_port: SeaweedFS filer ports.
        pacs_http_port: HTTP port of the PACS (Orthanc REST and DICOMweb at ``/dicom-web``).
        pacs_stable_age_s: Seconds without a new instance after which the PACS calls a study
            stable (Orthanc's ``StableAge``; ``watch`` processes stable studies only).
        start_timeout_s: How long ``stack up`` waits for each service to become healthy.
        stop_timeout_s: How long ``stack down`` waits after SIGTERM before SIGKILL.
        s3_access_key: S3 access key id (masked in ``repr``).
        s3_secret_key: S3 secret key (never shown).
        pacs_user / pacs_password: The PACS account (never shown).
    """

    run_dir: Path = field(default_factory=default_stack_dir)
    host: str = "127.0.0.1"
    ray_port: int = 6380
    ray_dashboard_port: int = 8265
    ray_client_server_port: int = 10001
    ray_dashboard_agent_port: int = 52365
    ray_num_cpus: int | None = None
    ray_object_store_mb: int | None = None
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    triton_model_config: str | None = None
    checkpoint: Path | None = None
    s3_port: int = 8333
    s3_grpc_port: int = 18333
    s3_master_port: int = 9333
    s3_master_grpc_port: int = 19333
    s3_volume_port: int = 9340
    s3_volume_grpc_port: int = 19340
    s3_filer_port: int = 8888
    s3_filer_grpc_port: int = 18888
    pacs_http_port: int = 8042
    pacs_stable_age_s: float = 10.0
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 40.0
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    pacs_user: str | None = field(default=None, repr=False)
    pacs_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir).expanduser().absolute())
        object.__setattr__(self, "model_repository", Path(self.model_repository).expanduser().absolute())
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint).expanduser().absolute())
        ports = {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_port")}
        for name, port in ports.items():
            if not 1 <= int(port) <= 65535:
                raise StackError(f"stack config: {name} must be a TCP port (1-65535), got {port}")
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise StackError(f"stack config: {name} and {seen[port]} both use port {port}")
            seen[port] = name

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        key = "None" if not self.s3_access_key else repr(self.s3_access_key[:4] + "***")
        return f"StackConfig({shown}, s3_access_key={key}, s3_secret_key='***', pacs_user='***', pacs_password='***')"

    __str__ = __repr__

    # ----------------------------------------------------------------- derived paths / urls
    @property
    def logs_dir(self) -> Path:
        """Folder of the service logs (``<run_dir>/logs``)."""
        return self.run_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        """Folder of the pid files (``<run_dir>/pids``)."""
        return self.run_dir / "pids"

    @property
    def s3_env_file(self) -> Path:
        """Generated credentials file (``<run_dir>/s3.env``, mode 0600)."""
        return self.run_dir / S3_ENV_FILE

    @property
    def s3_endpoint(self) -> str:
        """``host:port`` of the S3 API (the form ``UAE_S3_ENDPOINT`` takes)."""
        return f"{self.host}:{self.s3_port}"

    @property
    def triton_url(self) -> str:
        """``host:port`` of Triton's HTTP endpoint (the form ``UAE_TRITON_URL`` takes)."""
        return f"{self.host}:{self.triton_http_port}"

    @property
    def ray_gcs_address(self) -> str:
        """``host:port`` of the Ray GCS (for ``ray.init(address=...)`` drivers)."""
        return f"{self.host}:{self.ray_port}"

    @property
    def ray_dashboard_url(self) -> str:
        """Dashboard URL (for ``ray job submit --address``)."""
        return f"http://{self.host}:{self.ray_dashboard_port}"

    @property
    def pacs_url(self) -> str:
        """Base URL of the PACS (Orthanc's REST API; DICOMweb under ``/dicom-web``)."""
        return f"http://{self.host}:{self.pacs_http_port}"

    @property
    def has_credentials(self) -> bool:
        """Both S3 keys are known."""
        return bool(self.s3_access_key and self.s3_secret_key)

    @property
    def has_pacs_credentials(self) -> bool:
        """The PACS user and password are known."""
        return bool(self.pacs_user and self.pacs_password)

    def replace(self, **changes: Any) -> StackConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, yaml_path: str | Path | None = None) -> StackConfig:
        """Read the configuration: defaults < ``stack.yaml`` < environment.

        Args:
            env: Environment mapping (default ``os.environ``).
            yaml_path: Stack YAML file (default ``$UAE_STACK_CONFIG`` or
                ``cluster/local/stack.yaml`` of the checkout; a missing default file is fine).

        Returns:
            The configuration, with S3 credentials filled in when any source has them.

        Raises:
            StackError: Malformed file or values.
        """
        env = os.environ if env is None else env
        explicit = yaml_path or env.get(ENV_STACK_CONFIG)
        path = Path(explicit).expanduser() if explicit else DEFAULT_STACK_YAML
        values: dict[str, Any] = {}
        if path.is_file():
            values.update(_read_stack_yaml(path))
        elif explicit:
            raise StackError(f"{path}: stack config file not found")
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw not in (None, ""):
                values[name] = raw
        config = cls(**{k: _coerce(k, v, ENV_VARS.get(k, k)) for k, v in values.items()})
        return _fill_credentials(config, env)


def _read_stack_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"{path}: cannot parse stack config ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise StackError(f"{path}: expected a mapping at the top level")
    known = {f.name for f in fields(StackConfig)} - _SECRET_FIELDS
    unknown = set(data) - known
    if set(data) & _SECRET_FIELDS:
        raise StackError(f"{path}: credentials do not belong in the stack file; use {ENV_ACCESS_KEY}/"
                         f"{ENV_SECRET_KEY}, {ENV_PACS_USER}/{ENV_PACS_PASSWORD} or the 's3' and 'pacs' "
                         f"sections of {DEFAULT_USER_CONFIG}")
    if unknown:
        raise StackError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return {k: v for k, v in data.items() if v is not None}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a YAML/env value to the field's type (ints for ports, Paths, floats)."""
    if name in _SECRET_FIELDS:
        return str(value)
    try:
        if name.endswith("_port") or name in ("ray_num_cpus", "ray_object_store_mb"):
            return int(value)
        if name.endswith("_s"):
            return float(value)
    except (TypeError, ValueError):
        raise StackError(f"{source}: expected a number for {name}, got {value!r}") from None
    if name in ("run_dir", "model_repository", "checkpoint"):
        return Path(str(value))
    return str(value)


# ---------------------------------------------------------------------------- credentials
def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    """The user config file (``$UAE_CONFIG`` or ``~/.config/uae-ray/config.yaml``)."""
    env = os.environ if env is None else env
    return Path(env.get(ENV_USER_CONFIG) or DEFAULT_USER_CONFIG).expanduser()


@dataclass(frozen=True)
class _Credentials:
    """One pair of credentials: its config fields, variables, user-config keys and the run-dir
    file ``stack up`` generates it into when no source has it."""

    label: str
    fields: tuple[str, str]
    env_vars: tuple[str, str]
    section: str
    keys: tuple[str, str]
    file: str

    def generate(self) -> tuple[str, str]:
        alphabet = string.ascii_uppercase + string.digits
        first = ("UAE" + "".join(secrets.choice(alphabet) for _ in range(17)) if self.label == "S3"
                 else "uae-ray")
        return first, secrets.token_urlsafe(30)


_CREDENTIALS = (
    _Credentials("S3", ("s3_access_key", "s3_secret_key"), (ENV_ACCESS_KEY, ENV_SECRET_KEY), "s3",
                 ("access_key", "secret_key"), S3_ENV_FILE),
    _Credentials("PACS", ("pacs_user", "pacs_password"), (ENV_PACS_USER, ENV_PACS_PASSWORD), "pacs",
                 ("user", "password"), "pacs.env"),
)


def _user_config_keys(path: Path, cred: _Credentials) -> tuple[str | None, str | None]:
    if not path.is_file():
        return None, None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        # The parser's message may quote a secret: report only the file.
        raise StackError(f"{path}: cannot parse config file") from None
    section = data.get(cred.section) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return None, None
    first, second = (section.get(key) for key in cred.keys)
    return (str(first) if first else None, str(second) if second else None)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file (``#`` comments, optional quotes); missing file -> ``{}``."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return out


def _fill_credentials(config: StackConfig, env: Mapping[str, str]) -> StackConfig:
    """For each credential pair not set yet, take it from the first source that has it:
    environment, user config file, the generated run-dir file. A source with only one of the
    two values is an error."""
    user_file = user_config_path(env)
    for cred in _CREDENTIALS:
        sources = (
            ("/".join(cred.env_vars), lambda: tuple(getattr(config, f) for f in cred.fields)),
            (f"{user_file} ({cred.section}.{cred.keys[0]}/{cred.keys[1]})", lambda: _user_config_keys(user_file, cred)),
            (str(config.run_dir / cred.file), lambda: _generated(config, cred)),
        )
        for name, read in sources:
            first, second = read()
            if first and second:
                config = config.replace(**dict(zip(cred.fields, (first, second))))
                break
            if first or second:
                raise StackError(f"{cred.label} credentials incomplete in {name}: both values are needed")
    return config


def _generated(config: StackConfig, cred: _Credentials) -> tuple[str | None, str | None]:
    values = read_env_file(config.run_dir / cred.file)
    return values.get(cred.env_vars[0]), values.get(cred.env_vars[1])


def ensure_credentials(config: StackConfig) -> StackConfig:
    """Return ``config`` with S3 keys and a PACS account, generating and storing random ones
    for a pair no source has.

    Generated values go to ``<run_dir>/s3.env`` and ``<run_dir>/pacs.env`` (mode 0600) so that
    later commands (``stack status``, :func:`~uae_ray.stack.manager.client_env`) find them.
    """
    for cred in _CREDENTIALS:
        if all(getattr(config, f) for f in cred.fields):
            continue
        first, second = cred.generate()
        write_private_file(
            config.run_dir / cred.file,
            f"# generated by `uae-ray stack up`; {cred.label} credentials of the local stack\n"
            f"{cred.env_vars[0]}={first}\n{cred.env_vars[1]}={second}\n",
        )
        logger.info("generated %s credentials for the local stack (stored in %s)", cred.label,
                    config.run_dir / cred.file)
        config = config.replace(**dict(zip(cred.fields, (first, second))))
    return config


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (mode 0600, atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
