"""The Ray head node of the local stack (``ray start --head --block``).

``--block`` keeps ``ray start`` in the foreground as the leader of the service's process
group (GCS, raylet, dashboard, workers), so stopping the group stops the whole node without
touching other Ray instances on the machine (``ray stop`` would kill every one of them).

The node's environment carries the stack's S3 endpoint and keys and the Triton URL
(:func:`job_env`), so jobs submitted to it find them, and two Ray settings that clients need
too (see :func:`uae_ray.stack.manager.client_env`): ``RAY_AUTH_MODE=disabled`` (Ray 2.60
otherwise turns token authentication on when ``~/.ray/auth_token`` exists) and
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (keeps Ray on 127.0.0.1 instead of the machine's
address).
"""

from __future__ import annotations

import os
import shutil

from uae_ray.stack.config import StackConfig, StackError
from uae_ray.stack.process import port_open
from uae_ray.stack.service import ServiceSpec, base_env, http_ok, ports_of, venv_bin

NAME = "ray"

#: Environment the Ray head runs with and that drivers / job clients should share.
RAY_ENV: dict[str, str] = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}

#: Head-only settings: no 30 s node drain on SIGTERM (it waits on the GCS, which the same
#: group SIGTERM stops, so it could only time out).
HEAD_ENV: dict[str, str] = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def ray_executable() -> str:
    """Path of the ``ray`` CLI of the running environment."""
    candidate = venv_bin() / "ray"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise StackError("the `ray` command was not found; install ray[default] into this environment")
    return found


def command(config: StackConfig) -> list[str]:
    """The ``ray start --head`` command line for ``config``."""
    cmd = [
        ray_executable(), "start", "--head", "--block",
        f"--node-ip-address={config.host}",
        f"--port={config.ray_port}",
        "--include-dashboard=true",
        f"--dashboard-host={config.host}",
        f"--dashboard-port={config.ray_dashboard_port}",
        f"--dashboard-agent-listen-port={config.ray_dashboard_agent_port}",
        f"--ray-client-server-port={config.ray_client_server_port}",
        f"--num-cpus={config.ray_num_cpus if config.ray_num_cpus is not None else os.cpu_count() or 1}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]
    if config.ray_object_store_mb:
        cmd.append(f"--object-store-memory={config.ray_object_store_mb * 1024 * 1024}")
    return cmd


def healthy(config: StackConfig, timeout_s: float = 2.0) -> bool:
    """GCS, raylet, the job API and the client server answer (``/api/gcs_healthz``,
    ``/api/version``, the agent's ``/api/local_raylet_healthz``, the ``ray://`` port)."""
    base = config.ray_dashboard_url
    agent = f"http://{config.host}:{config.ray_dashboard_agent_port}/api/local_raylet_healthz"
    return (
        http_ok(f"{base}/api/version", timeout_s)
        and http_ok(f"{base}/api/gcs_healthz", timeout_s)
        and http_ok(agent, timeout_s)
        and port_open(config.host, config.ray_client_server_port, timeout_s)
    )


def job_env(config: StackConfig) -> dict[str, str]:
    """Stack endpoints (and S3 keys, when known) for the tasks and jobs of this head.

    Workers and ``ray job submit`` drivers inherit the head's environment, so jobs on the
    local stack reach its S3 and Triton without passing credentials around.
    """
    env = {"UAE_S3_ENDPOINT": config.s3_endpoint, "UAE_S3_SECURE": "false", "UAE_TRITON_URL": config.triton_url}
    if config.has_credentials:
        env.update(UAE_S3_ACCESS_KEY=str(config.s3_access_key), UAE_S3_SECRET_KEY=str(config.s3_secret_key))
    return env


def service(config: StackConfig) -> ServiceSpec:
    """The Ray head as a :class:`ServiceSpec`."""
    env = base_env({**RAY_ENV, **HEAD_ENV, **job_env(config)})
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not try to join another cluster
    return ServiceSpec(
        name=NAME,
        command=command(config),
        env=env,
        cwd=config.run_dir,
        url=config.ray_dashboard_url,
        ports=ports_of(config, ("ray_port", "ray_dashboard_port", "ray_dashboard_agent_port",
                                "ray_client_server_port")),
        healthy=lambda: healthy(config),
        stop_timeout_s=config.stop_timeout_s,
    )
