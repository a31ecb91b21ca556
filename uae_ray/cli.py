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
# Likewise for tasks.localize (LOCALIZE_METHODS, EMBEDDING_MODES and their defaults).
LOCALIZE_METHODS = ("embedding", "medlam")
LOCALIZE_DEFAULT_METHOD = "embedding"
EMBEDDING_MODES = ("extremes", "transfer")
# Likewise for tasks.segment (BOX_MODES, DEFAULT_BOX_MODE) and models.sam2d (OFFICIAL_KINDS).
SEGMENT_BOX_MODES = ("wpl", "spl")
SEGMENT_DEFAULT_BOX_MODE = "spl"
SAM_KINDS = ("vit_b", "vit_l", "vit_h", "medsam")
SEGMENT_BENCH_MODES = ("wpl", "spl", "gt-wpl", "gt-spl", "gt-slice")  # bench.segmentation.MODES
# Kept here for the same reason; tests check it equals bench.tracking.TRACK_METHODS.
TRACKING_BENCH_METHODS = ("nn", "fixed-point", "nn+extent", "fixed-point+extent")

logger = logging.getLogger("uae_ray")


def _add_embedder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--triton", metavar="URL", help="Triton HTTP endpoint (host:port); default: in-process torch")
    p.add_argument("--checkpoint", metavar="PATH", help="model checkpoint for in-process inference")


def _add_cohort_run_args(c: argparse.ArgumentParser, unit: str, strict_extra: str = "") -> None:
    """The options every cohort job shares: services, re-runs, smoke runs, exit status."""
    c.add_argument("--triton", metavar="URL", help="Triton HTTP endpoint; default: the local stack's")
    c.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address; default: $RAY_ADDRESS or the local stack's")
    c.add_argument("--force", action="store_true", help=f"redo {unit}s that are already done")
    c.add_argument("--limit", type=int, help=f"process at most this many {unit}s (smoke runs)")
    c.add_argument("--strict", action="store_true", help=f"exit 1 when any {unit} failed{strict_extra} (default: "
                   "failures are recorded in the manifest, exit 0)")


def _add_support_args(p: argparse.ArgumentParser, organs_note: str = "") -> None:
    """The annotated supports and the organs of localize, segment and cohort prelabel."""
    p.add_argument("--support", required=True, action="append", metavar="IMAGE:LABELS",
                   help="an annotated support scan and its label map (repeatable; s3:// URIs allowed)")
    p.add_argument("--organs", required=True, metavar="a,b", help=f"comma-separated organ names{organs_note}")
    p.add_argument("--label-names", metavar="FILE", help='JSON {"1": "liver", ...} for every support\'s labels '
                   "(default: <LABELS>.json or meta.json beside each label file)")


def _add_localizer_args(p: argparse.ArgumentParser, method_help: str,
                        mode_help: str = "embedding localizer mode (see localize)") -> None:
    """The localizer options of localize, segment and cohort prelabel."""
    p.add_argument("--method", choices=LOCALIZE_METHODS, default=LOCALIZE_DEFAULT_METHOD,
                   help=f"{method_help} (default: %(default)s)")
    p.add_argument("--embedding-mode", choices=EMBEDDING_MODES, help=mode_help)
    p.add_argument("--medlam-checkpoint", metavar="PATH", help="MedLAM weights (default: the shipped ones)")
    p.add_argument("--modality", choices=["CT", "MR"], help="force the modality of every image")


def _add_modality_args(b: argparse.ArgumentParser) -> None:
    """Target and support modalities of the leave-one-out benchmarks."""
    b.add_argument("--modality", choices=["CT", "MR"], default="CT", help="of the targets (default: CT)")
    b.add_argument("--support-modality", choices=["CT", "MR"],
                   help="of the supports (default: --modality); e.g. CT supports for MR targets")


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


def _cmd_track(args: argparse.Namespace) -> int:
    from uae_ray.commands import track

    return track.run(
        baseline=args.baseline,
        followup=args.followup,
        lesions=args.lesions,
        out=args.out,
        lesion_mask=args.lesion_mask,
        triton_url=args.triton,
        checkpoint=args.checkpoint,
        modality=args.modality,
        report=args.report,
        method=args.method,
        extent=not args.no_extent,
    )


def _cmd_register(args: argparse.Namespace) -> int:
    from uae_ray.commands import register

    return register.run(
        fixed=args.fixed,
        moving=args.moving,
        out=args.out,
        transform=args.transform,
        resampled=args.resampled,
        refine=args.refine,
        report=args.report,
        triton_url=args.triton,
        checkpoint=args.checkpoint,
        fixed_modality=args.fixed_modality,
        moving_modality=args.moving_modality,
    )


def _cmd_localize(args: argparse.Namespace) -> int:
    from uae_ray.commands import localize

    return localize.run(
        supports=args.support,
        target=args.target,
        organs=args.organs,
        out=args.out,
        label_names=args.label_names,
        method=args.method,
        embedding_mode=args.embedding_mode,
        triton_url=args.triton,
        checkpoint=args.checkpoint,
        medlam_checkpoint=args.medlam_checkpoint,
        modality=args.modality,
        report=args.report,
        truth=args.truth,
    )


def _cmd_segment(args: argparse.Namespace) -> int:
    from uae_ray.commands import segment

    return segment.run(
        supports=args.support,
        target=args.target,
        organs=args.organs,
        out=args.out,
        label_names=args.label_names,
        boxes=args.boxes,
        method=args.method,
        embedding_mode=args.embedding_mode,
        triton_url=args.triton,
        checkpoint=args.checkpoint,
        medlam_checkpoint=args.medlam_checkpoint,
        sam_checkpoint=args.sam_checkpoint,
        sam_kind=args.sam_kind,
        modality=args.modality,
        dicom_seg=args.dicom_seg,
    )


def _add_sam_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sam-checkpoint", metavar="PATH", help="segment-anything weights: a shipped name, an official "
                   "SAM ViT-B/L/H .pth or MedSAM's medsam_vit_b.pth (default: the shipped sam-vit-tiny-v1)")
    p.add_argument("--sam-kind", choices=SAM_KINDS, help="kind of an official --sam-checkpoint (default: from its "
                   "encoder width; medsam when the file name says so)")


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

    p = sub.add_parser("track", help="lesion tracking: baseline lesions found in a follow-up scan")
    p.add_argument("--baseline", required=True, metavar="IMAGE")
    p.add_argument("--followup", required=True, metavar="IMAGE")
    p.add_argument("--lesions", metavar="LESIONS.csv", help="name,x,y,z[,radius_mm] on the baseline (LPS mm)")
    p.add_argument("--lesion-mask", metavar="MASK", help="label map on the baseline: one lesion per label value "
                   "(centre = centroid); instead of or besides --lesions")
    p.add_argument("--out", required=True, metavar="TRACKS.csv")
    p.add_argument("--modality", choices=["CT", "MR"], help="force the modality of both images")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report")
    p.add_argument("--no-extent", action="store_true", help="match the lesion centre only, even where a radius "
                   "or mask gives its extent")
    _add_method_arg(p)
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_track)

    p = sub.add_parser("register", help="rigid/affine registration from anatomical embeddings (CT-CT, CT-MR)")
    p.add_argument("--fixed", required=True, metavar="IMAGE")
    p.add_argument("--moving", required=True, metavar="IMAGE")
    p.add_argument("--transform", choices=["rigid", "affine"], default="rigid", help="(default: %(default)s)")
    p.add_argument("--out", required=True, metavar="T.tfm", help="ITK transform file mapping fixed-space points "
                   "to moving-space points (sitk.ReadTransform)")
    p.add_argument("--resampled", metavar="OUT.nii.gz", help="also write the moving image resampled onto the fixed grid")
    p.add_argument("--refine", action="store_true", help="refine with a short Mattes-MI registration (SimpleITK)")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report (checkerboard and overlay)")
    p.add_argument("--fixed-modality", choices=["CT", "MR"], help="modality of --fixed (checked against the image)")
    p.add_argument("--moving-modality", choices=["CT", "MR"], help="modality of --moving (checked against the image)")
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("localize", help="few-shot organ boxes from k annotated support scans")
    _add_support_args(p)
    p.add_argument("--target", required=True, metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="BOXES.csv")
    _add_localizer_args(p, "embedding: anatomical-embedding matching; medlam: MedLAM",
                        "embedding method: transfer (organ points, median displacement) or extremes (fixed-point "
                        "match of the six extreme points); default: the measured better one")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report")
    p.add_argument("--truth", metavar="BOXES.csv", help="ground-truth boxes to draw in the report")
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_localize)

    p = sub.add_parser("segment", help="organ label map from k annotated support scans (MedLSAM: boxes -> "
                       "segment-anything)")
    _add_support_args(p, " (label k = the k-th)")
    p.add_argument("--target", required=True, metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="LABELS.nii.gz", help="label map on the target's grid; the "
                   "sidecar <OUT minus .nii.gz>.json names the labels")
    p.add_argument("--boxes", choices=SEGMENT_BOX_MODES, default=SEGMENT_DEFAULT_BOX_MODE,
                   help="wpl: one box on every slice of the organ's 3D box; spl: the organ in up to 6 parts along z, "
                   "each localized (default: %(default)s)")
    p.add_argument("--dicom-seg", metavar="SEG.dcm", help="also write a DICOM SEG (binary, one segment per "
                   "segmented organ) that references the target DICOM series; patient name and ID become a hashed "
                   "pseudonym")
    _add_localizer_args(p, "localizer of the boxes (see localize)")
    _add_sam_args(p)
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("stack", help="the local stack: Ray head, Triton server, S3 server")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("cohort", help="batch jobs over an archive in object storage (Ray tasks)")
    csub = p.add_subparsers(dest="job", required=True)
    for name, help_ in (("embed", "embed every scan of an archive"), ("landmarks", "detect landmarks in every scan")):
        c = csub.add_parser(name, help=help_)
        c.add_argument("--archive", required=True, metavar="URI", help="s3://bucket/prefix or a local folder")
        c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix")
        _add_cohort_run_args(c, "scan")
        if name == "landmarks":
            c.add_argument("--template", required=True, metavar="IMAGE")
            c.add_argument("--points", required=True, metavar="POINTS.csv")
            c.add_argument("--embeddings", metavar="URI", help="where stored embeddings live (default: --out)")
            _add_method_arg(c)
    c = csub.add_parser("track", help="track baseline lesions into follow-up scans, one task per pair")
    c.add_argument("--pairs", metavar="PAIRS.csv", help="CSV with baseline,followup and lesions and/or lesion_mask "
                   "columns (default: consecutive scans of each patient of --archive, lesions.csv beside each baseline)")
    c.add_argument("--archive", metavar="URI", help="archive root: relative entries of --pairs resolve against it, "
                   "and scan ids (shared with cohort embed) are relative to it")
    c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix")
    c.add_argument("--embeddings", metavar="URI", help="where stored embeddings live (default: --out)")
    _add_cohort_run_args(c, "pair")
    c.add_argument("--no-extent", action="store_true", help="match the lesion centre only, even where a radius "
                   "or mask gives its extent")
    _add_method_arg(c)
    c = csub.add_parser("register", help="rigid/affine transform (fixed -> moving) for every pair, one task per pair")
    c.add_argument("--pairs", metavar="PAIRS.csv", help="CSV with fixed,moving columns (optional fixed_modality, "
                   "moving_modality; default: consecutive scans of each patient of --archive)")
    c.add_argument("--archive", metavar="URI", help="archive root: relative entries of --pairs resolve against it, "
                   "and scan ids (shared with cohort embed) are relative to it")
    c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix")
    c.add_argument("--embeddings", metavar="URI", help="where stored embeddings live (default: --out)")
    c.add_argument("--transform", choices=["rigid", "affine"], default="rigid", help="(default: %(default)s)")
    c.add_argument("--refine", action="store_true", help="refine each transform with a short Mattes-MI registration")
    c.add_argument("--fixed-modality", choices=["CT", "MR"], help="modality of every fixed scan (checked per pair)")
    c.add_argument("--moving-modality", choices=["CT", "MR"], help="modality of every moving scan (checked per pair)")
    c.add_argument("--same-patient", action="store_true", help="fail pairs whose scans are of different patients "
                   "(DICOM PatientID or meta.json 'patient')")
    _add_cohort_run_args(c, "pair")
    c = csub.add_parser("prelabel", help="localize and segment organs in every scan from k annotated supports "
                        "(MedLSAM), one task per scan")
    c.add_argument("--archive", required=True, metavar="URI", help="s3://bucket/prefix or a local folder")
    _add_support_args(c, " (label k = the k-th)")
    c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix: labels/<scan_id>.nii.gz, "
                   "prelabel/index.parquet, qc/prelabel.html, manifests/prelabel")
    c.add_argument("--boxes", choices=SEGMENT_BOX_MODES, default=SEGMENT_DEFAULT_BOX_MODE,
                   help="slice prompts, as segment (default: %(default)s)")
    _add_localizer_args(c, "localizer of the boxes, as segment")
    _add_sam_args(c)
    c.add_argument("--report", metavar="URI", help="QC report (HTML; local path or s3:// URI; default: "
                   "<out>/qc/prelabel.html)")
    c.add_argument("--no-report", action="store_true", help="write neither the QC images nor the report")
    c.add_argument("--dicom-seg", action="store_true", help="also write <out>/dicom_seg/<scan_id>.dcm, a DICOM SEG "
                   "referencing the series, for every DICOM series scan (patient name and ID: the hashed patient id)")
    c.add_argument("--checkpoint", metavar="PATH", help="embedding model checkpoint for in-process inference")
    _add_cohort_run_args(c, "scan", " or a support could not be read")
    p.set_defaults(func=_cmd_cohort)

    p = sub.add_parser("bench", help="benchmarks writing JSON and a table")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("accuracy", help="landmark accuracy on the test patients of a split of ../shared/data")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/accuracy.json", metavar="JSON")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--points-per-case", type=int, default=20, help="random body points per synthetic warp")
    b.add_argument("--split", default="patients-v1", metavar="NAME|JSON",
                   help="patient split whose test side is measured (default: %(default)s)")
    b.add_argument("--part", action="append", dest="parts", choices=["a", "b", "d", "e", "abstention"],
                   help="part to run (repeatable; default: all): a synthetic warps, b cross-patient (+ b' whole "
                        "structures), d head-neck cross-patient, e CT<->MR, abstention")
    b.add_argument("--templates", type=int, default=3, help="head-neck templates of d and abstention (default: 3)")
    b.add_argument("--max-targets", type=int, metavar="N", help="at most N head-neck targets in d and abstention (the first by case id)")
    b.add_argument("--baseline", action="append", choices=["identity", "sitk", "elastix"], dest="baselines",
                   help="registration baseline to run (repeatable; default: identity, sitk and elastix)")
    b.add_argument("--no-baseline", action="store_true", help="skip every registration baseline")
    b.add_argument("--method", action="append", choices=MATCHING_METHODS, dest="methods",
                   help="matching method to measure (repeatable; default: all)")
    _add_embedder_args(b)
    b = bsub.add_parser("calibrate", help="choose the fixed-point found rule on the train patients of a split")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/calibrate.json", metavar="JSON")
    b.add_argument("--split", default="patients-v1", metavar="NAME|JSON", help="patient split (default: %(default)s)")
    b.add_argument("--templates", type=int, default=3, help="train-side head-neck templates (default: 3)")
    b.add_argument("--targets", type=int, default=20, help="train-side head-neck targets (default: 20)")
    _add_embedder_args(b)
    b = bsub.add_parser("tracking", help="lesion tracking on synthetic longitudinal pairs of the shared CTs")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/tracking.json", metavar="JSON")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--points-per-case", type=int, default=8, help="organ / body pseudo-lesions per case")
    b.add_argument("--method", action="append", choices=TRACKING_BENCH_METHODS, dest="methods",
                   help="tracking method to measure (repeatable; default: all)")
    b.add_argument("--case", action="append", dest="cases", metavar="CASE_ID", help="only these cases (repeatable)")
    b.add_argument("--split", default="patients-v1", metavar="NAME|JSON",
                   help="patient split whose test side is measured (default: %(default)s)")
    _add_embedder_args(b)
    b = bsub.add_parser("registration", help="rigid/affine registration against known transforms (CT-CT, CT-MR)")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/registration.json", metavar="JSON")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--points", type=int, default=100, help="TRE points per pair (in the overlap)")
    b.add_argument("--case", action="append", dest="cases", metavar="CASE_ID", help="only these cases (repeatable)")
    b.add_argument("--trials", type=int, help="at most this many known transforms per pair (smoke runs)")
    b.add_argument("--no-baseline", action="store_true", help="skip the SimpleITK MI baselines")
    b.add_argument("--no-refine", action="store_true", help="skip ours + MI refinement")
    b.add_argument("--no-ct-mr", action="store_true", help="skip the CT-MR pairs")
    b.add_argument("--ctmr-checkpoint", default="tiny-uae-v3", metavar="PATH",
                   help="model for the CT-MR pairs (default: %(default)s, the shipped cross-modality model)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s; SimpleITK runs on 1)")
    b.add_argument("--split", default="patients-v1", metavar="NAME|JSON",
                   help="patient split whose test side is measured (default: %(default)s)")
    _add_embedder_args(b)
    b = bsub.add_parser("localization", help="few-shot organ boxes, leave-one-out over ../shared/data")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/localization.json", metavar="JSON")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-k", type=int, default=5, help="largest number of support scans")
    b.add_argument("--method", action="append", choices=LOCALIZE_METHODS, dest="methods",
                   help="localizer to measure (repeatable; default: all)")
    b.add_argument("--embedding-mode", action="append", choices=EMBEDDING_MODES, dest="embedding_modes",
                   help="embedding-localizer mode to measure (repeatable; default: all)")
    _add_modality_args(b)
    b.add_argument("--min-ml", type=float, default=20.0, help="organs at least this large make the headline mean")
    b.add_argument("--cases", metavar="a,b", help="restrict to these case ids (smoke runs)")
    b.add_argument("--organs", metavar="a,b", help="restrict to these organs (smoke runs)")
    b.add_argument("--medlam-checkpoint", metavar="PATH")
    _add_embedder_args(b)
    b = bsub.add_parser("segmentation", help="MedLSAM segmentation (WPL, SPL, ground-truth boxes): Dice, HD95, "
                        "time per organ, leave-one-out over ../shared/data")
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default="bench-results/segmentation.json", metavar="JSON")
    b.add_argument("--mode", action="append", choices=SEGMENT_BENCH_MODES, dest="modes",
                   help="prompt mode to measure (repeatable; default: all)")
    b.add_argument("--min-ml", type=float, default=20.0, help="organs at least this large make the headline mean")
    b.add_argument("--cases", metavar="a,b", help="restrict the targets to these case ids (smoke runs)")
    b.add_argument("--organs", metavar="a,b", help="restrict to these organs (smoke runs)")
    b.add_argument("--method", choices=LOCALIZE_METHODS, default=LOCALIZE_DEFAULT_METHOD,
                   help="localizer of the wpl/spl boxes (default: %(default)s)")
    b.add_argument("--embedding-mode", choices=EMBEDDING_MODES, help="embedding localizer mode (see localize)")
    b.add_argument("--medlam-checkpoint", metavar="PATH")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    _add_modality_args(b)
    _add_sam_args(b)
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
    logging.getLogger("highdicom").setLevel(logging.DEBUG if args.verbose else logging.WARNING)  # per-module chatter
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
