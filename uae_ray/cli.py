"""The ``uae-ray`` command line: thin argument parsing over the library.

Every verb calls one library function; heavy imports happen inside the handlers so that
``uae-ray --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

# Kept here so the CLI starts without importing torch; tests check it equals matching.METHODS.
MATCHING_METHODS = ("nn", "fixed-point")

logger = logging.getLogger("uae_ray")


def _add_embedder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--triton", metavar="URL", help="Triton HTTP endpoint (host:port); default: in-process torch")
    p.add_argument("--checkpoint", metavar="PATH", help="model checkpoint for in-process inference")


def _add_method_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=MATCHING_METHODS, default="fixed-point",
                   help="nn: nearest neighbour; fixed-point: round-trip consistent matching that may abstain "
                   "(found=false) (default: %(default)s)")


def _cmd_landmarks(args: argparse.Namespace) -> int:
    from uae_ray.commands import landmarks

    return landmarks.run(
        template=args.template,
        points=args.points,
        targets=args.target,
        out=args.out,
        triton_url=args.triton,
        checkpoint=args.checkpoint,
        modality=args.modality,
        report=args.report,
        method=args.method,
    )


def _cmd_stack(args: argparse.Namespace) -> int:
    from uae_ray.commands import stack

    return stack.run(args.action)


def _cmd_cohort(args: argparse.Namespace) -> int:
    from uae_ray.commands import cohort

    return cohort.run(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from uae_ray.commands import bench

    return bench.run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from uae_ray.demo import run_demo

    return run_demo(out_dir=args.out, keep_stack=args.keep_stack)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-parser per verb)."""
    parser = argparse.ArgumentParser(prog="uae-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("landmarks", help="one-shot landmark detection from a template")
    p.add_argument("--template", required=True, metavar="IMAGE")
    p.add_argument("--points", required=True, metavar="POINTS.csv", help="name,x,y,z on the template (LPS mm)")
    p.add_argument("--target", required=True, action="append", metavar="IMAGE", help="repeatable")
    p.add_argument("--out", required=True, metavar="DETECTIONS.csv")
    p.add_argument("--modality", choices=["CT", "MR"], help="force the modality of every image")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report")
    _add_method_arg(p)
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_landmarks)

    p = sub.add_parser("stack", help="the local stack: Ray head, Triton server, S3 server")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("cohort", help="batch jobs over an archive in object storage (Ray tasks)")
    csub = p.add_subparsers(dest="job", required=True)
    for name, help_ in (("embed", "embed every scan of an archive"), ("landmarks", "detect landmarks in every scan")):
        c = csub.add_parser(name, help=help_)
        c.add_argument("--archive", required=True, metavar="URI", help="s3://bucket/prefix or a local folder")
        c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix")
        c.add_argument("--triton", metavar="URL", help="Triton HTTP endpoint; default: the local stack's")
        c.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address; default: $RAY_ADDRESS or the local stack's")
        c.add_argument("--force", action="store_true", help="redo scans that are already done")
        c.add_argument("--limit", type=int, help="process at most this many scans (smoke runs)")
        c.add_argument("--strict", action="store_true", help="exit 1 when any scan failed (default: failures are "
                       "recorded in the manifest, exit 0)")
        if name == "landmarks":
            c.add_argument("--template", required=True, metavar="IMAGE")
            c.add_argument("--points", required=True, metavar="POINTS.csv")
            c.add_argument("--embeddings", metavar="URI", help="where stored embeddings live (default: --out)")
            _add_method_arg(c)
    p.set_defaults(func=_cmd_cohort)

    p = sub.add_parser("bench", help="benchmarks writing JSON and a table")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("accuracy", help="synthetic warps and cross-patient landmarks on ../shared/data")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/accuracy.json", metavar="JSON")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--points-per-case", type=int, default=20, help="random body points per synthetic warp")
    b.add_argument("--baseline", action="append", choices=["sitk", "elastix"], dest="baselines",
                   help="registration baseline to run (repeatable; default: sitk and elastix)")
    b.add_argument("--no-baseline", action="store_true", help="skip every registration baseline")
    b.add_argument("--method", action="append", choices=MATCHING_METHODS, dest="methods",
                   help="matching method to measure (repeatable; default: all)")
    _add_embedder_args(b)
    b = bsub.add_parser("speed", help="seconds per scan (in-process and Triton) and per landmark")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/speed.json", metavar="JSON")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--triton", metavar="URL", help="use this Triton server instead of starting the local stack")
    b.add_argument("--checkpoint", metavar="PATH")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="end-to-end demo on real sample CTs")
    p.add_argument("--out", default="demo-output", metavar="DIR")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``uae-ray`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
