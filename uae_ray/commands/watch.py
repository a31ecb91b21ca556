"""``uae-ray watch``: scheduled, incremental jobs over a DICOMweb PACS or an archive (see
:mod:`uae_ray.watch.cycle`)."""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """One cycle (``--once``) or a cycle every ``--every``. Exit codes: 0 done (failures are
    recorded per study and step), 2 nothing could run (one error line: a bad pipeline, an
    unreachable PACS or service, another watcher on ``--out``; nothing is lost, the cursor is
    not advanced)."""
    from uae_ray.cohort.lease import LeaseHeldError
    from uae_ray.cohort.runner import ServiceUnreachableError
    from uae_ray.commands.cohort import service_defaults
    from uae_ray.storage import StorageError
    from uae_ray.volume.errors import one_line
    from uae_ray.watch import PacsError, PipelineError, WatchError, WatchSettings, load_pipeline, parse_duration
    from uae_ray.watch.cycle import run_cycle, watch_every

    try:
        pipeline = load_pipeline(args.pipeline)
        every = parse_duration(args.every, "--every") if args.every else pipeline.every_s
        if not args.once and every is None:
            raise PipelineError("give --once, --every DURATION, or schedule.every in the pipeline")
        triton, ray_address = service_defaults(args.triton, args.ray_address)
        settings = WatchSettings(args.source, args.out, pipeline, triton, ray_address, args.since)
        if args.once:
            print(json.dumps(run_cycle(settings), indent=2))
        else:
            watch_every(settings, every, args.cycles)
    except (PipelineError, WatchError, PacsError, LeaseHeldError, StorageError, ServiceUnreachableError,
            ValueError) as e:
        logger.error("watch: %s", one_line(e))
        return 2
    return 0
