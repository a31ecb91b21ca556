"""``python -m uae_ray.stack up|down|status|exec-triton`` (the same as ``uae-ray stack ...``,
plus ``exec-triton``: run only the Triton server in the foreground, e.g. in a container)."""

from __future__ import annotations

import argparse
import logging
import sys

from uae_ray.stack import StackConfig, StackError, stack_down, stack_status, stack_up
from uae_ray.stack.triton import exec_server


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0: healthy / stopped)."""
    parser = argparse.ArgumentParser(prog="python -m uae_ray.stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "exec-triton"])
    parser.add_argument("services", nargs="*", help="subset of s3, triton, ray, pacs (default: all; pacs where Orthanc is installed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = args.services or None
    try:
        config = StackConfig.load()
        if args.action == "exec-triton":
            exec_server(config)
            return 1  # not reached
        if args.action == "up":
            status = stack_up(config, services)
        elif args.action == "down":
            status = stack_down(config, services)
        else:
            status = stack_status(config, services)
    except StackError as exc:
        logging.getLogger("uae_ray.stack").error("%s", exc)
        return 1
    sys.stdout.write(status.table() + "\n")
    if args.action == "down":
        return 1 if status.any_alive else 0
    return 0 if status.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
