"""``uae-ray bench accuracy|speed``: run a benchmark, write JSON, print a table."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _data_dir(arg: str | None) -> Path:
    from uae_ray.bench.dataset import default_data_dir

    path = Path(arg) if arg else default_data_dir()
    if path is None or not (path / "manifest.csv").is_file():
        raise SystemExit("uae-ray bench: no shared data folder found; pass --data DIR (with manifest.csv)")
    return path


def run(args: argparse.Namespace) -> int:
    from uae_ray.serving import get_embedder

    data = _data_dir(args.data)
    if args.bench == "accuracy":
        from uae_ray.bench.accuracy import accuracy_table, run_accuracy
        from uae_ray.bench.baselines import BASELINES
        from uae_ray.matching import METHODS

        embedder = get_embedder(args.triton, checkpoint=args.checkpoint)
        methods = tuple(args.methods or METHODS)
        baselines = () if args.no_baseline else tuple(args.baselines or BASELINES)
        result = run_accuracy(data, embedder, args.out, args.seed, args.points_per_case, baselines, methods)
        print(accuracy_table(result))
    else:
        from uae_ray.bench.speed import run_speed, speed_table

        local = get_embedder(None, checkpoint=args.checkpoint)
        if args.triton:
            result = run_speed(data, local, get_embedder(args.triton), args.out, args.repeats)
        else:
            from uae_ray.stack import StackConfig, client_env, ensure_credentials, stack_down, stack_up

            config = ensure_credentials(StackConfig.load())
            stack_up(config)
            try:
                triton = get_embedder(client_env(config)["UAE_TRITON_URL"])
                result = run_speed(data, local, triton, args.out, args.repeats)
            finally:
                stack_down(config)
        print(speed_table(result))
    print(f"\nJSON: {args.out}")
    return 0
