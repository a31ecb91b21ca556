"""The Triton Inference Server of the local stack.

The ``nvidia-pytriton`` wheel ships a real ``tritonserver`` binary with the python backend.
It runs in place from ``site-packages/pytriton/tritonserver``; the python backend stub for the
running Python version is copied into ``backends/python/`` first (idempotent). The venv's
``bin`` goes first on PATH and ``LD_LIBRARY_PATH`` starts with the running Python's ``LIBDIR``
so the stub embeds this Python (and sees the venv's site-packages with ``uae_ray``) instead of
the system ``libpython``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from uae_ray.stack.config import StackConfig, StackError
from uae_ray.stack.service import ServiceSpec, base_env, http_ok, ports_of

logger = logging.getLogger(__name__)

NAME = "triton"
STUB_NAME = "triton_python_backend_stub"


def server_home() -> Path:
    """``site-packages/pytriton/tritonserver`` of the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise StackError("nvidia-pytriton is not installed; it provides the tritonserver binary") from exc
    home = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise StackError(f"{home}: no bin/tritonserver in the nvidia-pytriton package")
    return home


def ensure_python_stub(home: Path) -> Path:
    """Copy the python backend stub of this Python version into ``backends/python/``.

    Idempotent and safe against concurrent callers (copy to a temporary name, then rename).

    Returns:
        Path of the installed stub.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = home / "python_backend_stubs" / version / STUB_NAME
    if not source.is_file():
        raise StackError(f"{source}: no python backend stub for Python {version}")
    target = home / "backends" / "python" / STUB_NAME
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return target
    tmp = target.with_name(f".{STUB_NAME}.{os.getpid()}.tmp")
    shutil.copy2(source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    logger.info("installed the Triton python backend stub for Python %s into %s", version, target.parent)
    return target


def server_env(config: StackConfig) -> dict[str, str]:
    """Environment of the server: venv first on PATH, this Python's lib dir first on
    LD_LIBRARY_PATH, ``UAE_CHECKPOINT`` from the config."""
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    old = os.environ.get("LD_LIBRARY_PATH", "")
    env = base_env({"LD_LIBRARY_PATH": os.pathsep.join(p for p in (libdir, old) if p)})
    if config.checkpoint is not None:
        env["UAE_CHECKPOINT"] = str(config.checkpoint)
    else:
        env.pop("UAE_CHECKPOINT", None)
    return env


def command(config: StackConfig, home: Path) -> list[str]:
    """The ``tritonserver`` command line for ``config``."""
    host = config.host
    extra = [f"--model-config-name={config.triton_model_config}"] if config.triton_model_config else []
    return [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={config.model_repository}",
        f"--backend-directory={home / 'backends'}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=5",  # idle keep-alive client connections otherwise hold `down`
        "--allow-http=true", f"--http-address={host}", f"--http-port={config.triton_http_port}",
        "--allow-grpc=true", f"--grpc-address={host}", f"--grpc-port={config.triton_grpc_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false",
        f"--metrics-address={host}", f"--metrics-port={config.triton_metrics_port}",
        "--allow-sagemaker=false", "--allow-vertex-ai=false",
        "--log-verbose=0",
        *extra,
    ]


def healthy(config: StackConfig, timeout_s: float = 2.0) -> bool:
    """``GET /v2/health/ready`` is 200 (with strict readiness: every model is loaded)."""
    return http_ok(f"http://{config.triton_url}/v2/health/ready", timeout_s)


def _prepare(config: StackConfig, home: Path) -> None:
    if not config.model_repository.is_dir():
        raise StackError(f"{config.model_repository}: Triton model repository not found (UAE_MODEL_REPOSITORY)")
    if config.checkpoint is not None and not config.checkpoint.is_file():
        raise StackError(f"{config.checkpoint}: checkpoint not found (UAE_CHECKPOINT)")
    ensure_python_stub(home)


def service(config: StackConfig) -> ServiceSpec:
    """Triton as a :class:`ServiceSpec`."""
    home = server_home()
    return ServiceSpec(
        name=NAME,
        command=command(config, home),
        env=server_env(config),
        cwd=config.run_dir,
        url=f"http://{config.triton_url}",
        ports=ports_of(config, ("triton_http_port", "triton_grpc_port", "triton_metrics_port")),
        healthy=lambda: healthy(config),
        prepare=lambda: _prepare(config, home),
        stop_timeout_s=config.stop_timeout_s,
    )


def exec_server(config: StackConfig) -> None:
    """Replace this process by the Triton server (foreground; for containers).

    Same command and environment as the local stack's Triton, without pid files.
    """
    spec = service(config)
    spec.prepare()
    logger.info("exec %s", spec.command[0])
    os.execve(spec.command[0], spec.command, spec.env)
