"""Start, stop and check the local stack: Ray head, Triton server and S3 server.

``uae-ray stack up|down|status`` calls :func:`stack_up`, :func:`stack_down` and
:func:`stack_status`; :func:`client_env` gives clients the endpoints and credentials.
"""

from uae_ray.stack.config import StackConfig, StackError, ensure_credentials
from uae_ray.stack.manager import (
    SERVICES,
    ServiceStatus,
    StackStatus,
    client_env,
    stack_down,
    stack_status,
    stack_up,
)

__all__ = [
    "SERVICES",
    "ServiceStatus",
    "StackConfig",
    "StackError",
    "StackStatus",
    "client_env",
    "ensure_credentials",
    "stack_down",
    "stack_status",
    "stack_up",
]
