"""``uae-ray stack up|down|status``: the local Ray head, Triton server and S3 server."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def run(action: str) -> int:
    from uae_ray.stack import StackConfig, stack_down, stack_status, stack_up

    config = StackConfig.load()
    if action == "up":
        status = stack_up(config)
    elif action == "down":
        stack_down(config)
        status = stack_status(config)
    else:
        status = stack_status(config)
    print(status.table())
    if action == "down":
        return 0 if not status.any_alive else 1
    return 0 if status.healthy else 1
