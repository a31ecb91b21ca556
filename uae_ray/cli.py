"""The ``uae-ray`` command line: thin argument parsing over the library.

Every verb calls one library function; heavy imports happen inside the handlers so that
``uae-ray --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
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
# Likewise; tests check they equal cohort.maps_io.TIERS and DEFAULT_TIER.
STORAGE_TIERS = ("full", "int8", "int8-body", "compact", "compact-hq", "compact-hq-s1", "compact-hq-hs")
DEFAULT_STORAGE_TIER = "compact-hq-hs"

#: Shipped embedding models by name (``--checkpoint NAME``); tests check it equals
#: models.checkpoint.SHIPPED_WEIGHTS and DEFAULT_MODEL its default (kept here: no torch import).
DEVICES = ("auto", "cpu", "cuda")
SHIPPED_MODELS = ("tiny-uae-v3", "tiny-v0", "tiny-ctmr-v1", "tiny-uae-v2", "tiny-lpo-a", "tiny-lpo-b", "tiny-lpo-d", "tiny-lpo-e")
DEFAULT_MODEL = "tiny-uae-v3"


logger = logging.getLogger("uae_ray")


_CHECKPOINT_HELP = ("embedding model for in-process inference: a shipped name (" + ", ".join(SHIPPED_MODELS) +
                    f"; default {DEFAULT_MODEL}), a checkpoint file, or an official SAM/UAE .pth")


def _add_embedder_args(p: argparse.ArgumentParser, storage_tier: bool = False) -> None:
    p.add_argument("--triton", metavar="URL", help="Triton HTTP endpoint (host:port); default: in-process torch")
    p.add_argument("--checkpoint", metavar="NAME|PATH", help=_CHECKPOINT_HELP)
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where in-process models run: auto = CUDA when this torch build has it, else CPU")
    if storage_tier:
        p.add_argument("--storage-tier", choices=STORAGE_TIERS, help="measure the maps as this storage tier stores "
                       "them (round trip through the Parquet codec; default: the maps as computed)")


def _add_archive_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--archive", required=True, metavar="URI", help="s3://bucket/prefix or a local folder of scans")
    c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix (local folder or s3://)")


def _add_pair_job_args(c: argparse.ArgumentParser, pairs_help: str) -> None:
    """``--pairs``, ``--archive``, ``--out``, ``--embeddings`` of the pair jobs (track, register)."""
    c.add_argument("--pairs", metavar="PAIRS.csv", help=pairs_help)
    c.add_argument("--archive", metavar="URI", help="archive root: relative entries of --pairs resolve against it, "
                   "and scan ids (shared with cohort embed) are relative to it")
    c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix (local folder or s3://)")
    c.add_argument("--embeddings", metavar="URI", help="where stored embeddings live (default: --out)")


def _add_bench_io(b: argparse.ArgumentParser, name: str, seed: bool = False) -> None:
    """``--data``, ``--out`` (and ``--seed``) of every benchmark."""
    b.add_argument("--data", metavar="DIR", help="the shared data folder (default: ../shared/data)")
    b.add_argument("--out", default=f"bench-results/{name}.json", metavar="JSON",
                   help="result JSON (a table is printed too)")
    if seed:
        b.add_argument("--seed", type=int, default=0, help="random seed of the draws")


def _add_split_arg(b: argparse.ArgumentParser) -> None:
    b.add_argument("--split", default="patients-v1", metavar="NAME|JSON",
                   help="patient split whose test side is measured (default: %(default)s)")


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
        device=args.device,
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
        device=args.device,
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
        device=args.device,
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
        device=args.device,
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
        report=args.report,
        device=args.device,
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


def _cmd_watch(args: argparse.Namespace) -> int:
    from uae_ray.commands import watch

    return watch.run(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from uae_ray.commands import bench

    return bench.run(args)


def _cmd_archive(args: argparse.Namespace) -> int:
    from uae_ray.api.archive import upload_archive
    from uae_ray.storage import StorageError

    try:
        summary = upload_archive(args.src, args.dest, progress=not args.quiet)
    except (OSError, StorageError) as e:
        logger.error("%s", e)
        return 2
    print(f"{summary.uploaded} files uploaded, {summary.skipped} already there; {summary.scans} scans in {args.dest}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from uae_ray.demo import run_demo

    return run_demo(out_dir=args.out, keep_stack=args.keep_stack)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default appended where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _common_options() -> argparse.ArgumentParser:
    """``-v`` / ``-q``, accepted before or after the verb (SUPPRESS: a verb-level default does
    not overwrite what was given before the verb)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only")
    return common


def _verb(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
          examples: list[str]) -> argparse.ArgumentParser:
    """A sub-command with a one-line summary (in the parent's list), a description and examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    paragraphs = [f"{summary[0].upper()}{summary[1:]}.", *description.split("\n")]
    text = "\n\n".join(textwrap.fill(para, 88) for para in paragraphs)
    return sub.add_parser(name, help=summary, description=text,
                          epilog=epilog, formatter_class=_HelpFormatter, parents=[_common_options()])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("uae-ray")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-parser per verb, each with a description and examples)."""
    parser = argparse.ArgumentParser(
        prog="uae-ray", formatter_class=_HelpFormatter,
        description=textwrap.fill("Self-supervised anatomical embeddings of CT and MR scans: find anatomical points, "
                                  "track lesions, register scans and localize / segment organs, one scan at a time or "
                                  "over whole archives (Ray). Coordinates are world LPS millimetres (ITK / DICOM).", 88),
        epilog="Run 'uae-ray VERB --help' for a verb's options and examples.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--version", action="version", version=f"uae-ray {_version()}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = _verb(sub, "landmarks", "one-shot landmark detection: points of a template scan found in target scans",
              "Embeds the template and every target once, then matches each template point into each target. "
              "A point the fixed-point matcher cannot confirm (round trip inconsistent, or outside the target's "
              "field of view) is reported with found=false at its best estimate.\n"
              "Output: one CSV row per (target, point): name,x,y,z,score,found,target.",
              ["uae-ray landmarks --template t.nii.gz --points points.csv --target a.nii.gz --target b/ "
               "--out detections.csv --report qc.html",
               "uae-ray landmarks --template t.nii.gz --points points.mrk.json --target s3://bucket/scan.nii.gz "
               "--out s3://bucket/out/detections.csv"])
    p.add_argument("--template", required=True, metavar="IMAGE",
                   help="the scan the points are given on (NIfTI/NRRD/MHA file, DICOM folder or s3:// URI)")
    p.add_argument("--points", required=True, metavar="POINTS.csv", help="name,x,y,z on the template (LPS mm)")
    p.add_argument("--target", required=True, action="append", metavar="IMAGE",
                   help="a scan to find the points in (repeatable; file, DICOM folder or s3:// URI)")
    p.add_argument("--out", required=True, metavar="DETECTIONS.csv", help="detections CSV (local path or s3:// URI)")
    p.add_argument("--modality", choices=["CT", "MR"], help="force the modality of every image (default: decided "
                   "from the DICOM header or the intensities, logged)")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report")
    _add_method_arg(p)
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_landmarks)

    p = _verb(sub, "track", "lesion tracking: baseline lesions found in a follow-up scan",
              "Each lesion centre (and, with a radius or mask, points of its extent that vote) is matched from the "
              "baseline into the follow-up. Output: one CSV row per lesion: name,x,y,z,score,found plus the "
              "baseline position, radius, consistency and votes.",
              ["uae-ray track --baseline b.nii.gz --followup f.nii.gz --lesions lesions.csv --out tracks.csv",
               "uae-ray track --baseline b.nii.gz --followup f.nii.gz --lesion-mask gtv.nii.gz --out tracks.csv "
               "--report qc.html"])
    p.add_argument("--baseline", required=True, metavar="IMAGE", help="the earlier scan, where the lesions are given")
    p.add_argument("--followup", required=True, metavar="IMAGE", help="the later scan to find them in")
    p.add_argument("--lesions", metavar="LESIONS.csv", help="name,x,y,z[,radius_mm] on the baseline (LPS mm)")
    p.add_argument("--lesion-mask", metavar="MASK", help="label map on the baseline: one lesion per label value "
                   "(centre = centroid); instead of or besides --lesions")
    p.add_argument("--out", required=True, metavar="TRACKS.csv", help="tracks CSV (local path or s3:// URI)")
    p.add_argument("--modality", choices=["CT", "MR"], help="force the modality of both images")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report")
    p.add_argument("--no-extent", action="store_true", help="match the lesion centre only, even where a radius "
                   "or mask gives its extent")
    _add_method_arg(p)
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_track)

    p = _verb(sub, "register", "rigid/affine registration from anatomical embeddings (CT-CT, CT-MR)",
              "A body grid of the fixed scan is matched into the moving scan; a robust (RANSAC + IRLS) fit of the "
              "consistent matches gives the transform, optionally refined by a short Mattes-MI registration. The "
              "transform maps fixed-space points to moving-space points (ITK convention), so "
              "sitk.Resample(moving, fixed, transform) puts the moving scan on the fixed grid.",
              ["uae-ray register --fixed ct.nii.gz --moving ct_followup.nii.gz --out t.tfm",
               "uae-ray register --fixed ct.nii.gz --moving mr.nii.gz --transform affine --refine --out t.tfm "
               "--resampled mr_on_ct.nii.gz --report qc.html"])
    p.add_argument("--fixed", required=True, metavar="IMAGE", help="the reference scan (its grid is the output grid)")
    p.add_argument("--moving", required=True, metavar="IMAGE", help="the scan to bring onto the fixed one")
    p.add_argument("--transform", choices=["rigid", "affine"], default="rigid",
                   help="rigid: rotation + translation; affine: also scaling and shear")
    p.add_argument("--out", required=True, metavar="T.tfm", help="ITK transform file mapping fixed-space points "
                   "to moving-space points (sitk.ReadTransform)")
    p.add_argument("--resampled", metavar="OUT.nii.gz", help="also write the moving image resampled onto the fixed grid")
    p.add_argument("--refine", action="store_true", help="refine with a short Mattes-MI registration (SimpleITK)")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report (checkerboard and overlay)")
    p.add_argument("--fixed-modality", choices=["CT", "MR"], help="modality of --fixed (checked against the image)")
    p.add_argument("--moving-modality", choices=["CT", "MR"], help="modality of --moving (checked against the image)")
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_register)

    p = _verb(sub, "localize", "few-shot organ boxes from k annotated support scans",
              "Every support's organs are carried into the target by embedding matching (or MedLAM) and the "
              "supports vote per box coordinate. Output: one CSV row per organ: "
              "organ,xmin,ymin,zmin,xmax,ymax,zmax (LPS mm) then score,found,status,method,n_supports,message.",
              ["uae-ray localize --support s1.nii.gz:s1_labels.nii.gz --support s2.nii.gz:s2_labels.nii.gz "
               "--organs liver,spleen --target t.nii.gz --out boxes.csv --report qc.html"])
    _add_support_args(p)
    p.add_argument("--target", required=True, metavar="IMAGE", help="the scan to localize the organs in")
    p.add_argument("--out", required=True, metavar="BOXES.csv", help="boxes CSV (local path or s3:// URI)")
    _add_localizer_args(p, "embedding: anatomical-embedding matching; medlam: MedLAM",
                        "embedding method: transfer (organ points, median displacement) or extremes (fixed-point "
                        "match of the six extreme points); default: the measured better one")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report")
    p.add_argument("--truth", metavar="BOXES.csv", help="ground-truth boxes to draw in the report")
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_localize)

    p = _verb(sub, "segment", "organ label map from k annotated support scans (MedLSAM: boxes, then segment-anything)",
              "Organs are localized as in 'localize' and every axial slice of each box is segmented by a 2D "
              "segment-anything model from its box prompt. Output: a label map on the target's grid (label k = "
              "the k-th organ of --organs) and a JSON sidecar naming the labels; optionally a DICOM SEG.",
              ["uae-ray segment --support s1.nii.gz:s1_labels.nii.gz --organs liver,spleen --target t.nii.gz "
               "--out labels.nii.gz",
               "uae-ray segment --support s1/:s1_labels.nii.gz --organs liver --target dicom_folder/ "
               "--out labels.nii.gz --dicom-seg seg.dcm --sam-checkpoint sam_vit_b_01ec64.pth"])
    _add_support_args(p, " (label k = the k-th)")
    p.add_argument("--target", required=True, metavar="IMAGE", help="the scan to segment")
    p.add_argument("--out", required=True, metavar="LABELS.nii.gz", help="label map on the target's grid; the "
                   "sidecar <OUT minus .nii.gz>.json names the labels")
    p.add_argument("--boxes", choices=SEGMENT_BOX_MODES, default=SEGMENT_DEFAULT_BOX_MODE,
                   help="wpl: one box on every slice of the organ's 3D box; spl: the organ in up to 6 parts along z, "
                   "each localized")
    p.add_argument("--dicom-seg", metavar="SEG.dcm", help="also write a DICOM SEG (binary, one segment per "
                   "segmented organ) that references the target DICOM series; patient name and ID become a hashed "
                   "pseudonym")
    p.add_argument("--report", metavar="REPORT.html", help="also write an HTML QC report (each organ's contour on "
                   "three slices, its volume, box and status)")
    _add_localizer_args(p, "localizer of the boxes (see localize)")
    _add_sam_args(p)
    _add_embedder_args(p)
    p.set_defaults(func=_cmd_segment)

    p = _verb(sub, "stack", "the local stack: Ray head, Triton server, S3 server, DICOMweb PACS (Orthanc)",
              "Starts, stops or reports the services the cohort jobs use, all on loopback, with their state, logs "
              "and credentials in the stack's run folder (UAE_STACK_DIR; see docs/cohort.md).",
              ["uae-ray stack up", "uae-ray stack status", "uae-ray stack down"])
    p.add_argument("action", choices=["up", "down", "status"], help="up: start; down: stop; status: what runs")
    p.set_defaults(func=_cmd_stack)

    p = _verb(sub, "watch", "scheduled, incremental jobs over a DICOMweb PACS or an S3 archive; results go back to "
              "the PACS as DICOM SEG and SR",
              "Each cycle discovers the studies that became stable since the last one (Orthanc's changes feed), "
              "fetches each one's primary CT/MR series de-identified, runs the pipeline's steps through the cohort "
              "jobs (embed, landmarks, prelabel, and tracking and registration against the patient's prior study), "
              "stores a DICOM SEG and a DICOM SR back to the PACS with STOW-RS and writes an HTML run report. An "
              "s3:// (or folder) source: the scans not yet in the watch manifest, processed in place (no send-back). "
              "The cursor under OUT/watch/ advances only after a cycle's work is committed. PACS credentials: "
              "UAE_PACS_USER / UAE_PACS_PASSWORD or the 'pacs' section of ~/.config/uae-ray/config.yaml "
              "(see docs/watch.md).",
              ["uae-ray watch --source dicomweb+http://127.0.0.1:8042/dicom-web --out s3://results/pacs "
               "--pipeline jobs/watch_pipeline.yaml --once",
               "uae-ray watch --source dicomweb+http://pacs:8042/dicom-web --out s3://results/pacs "
               "--pipeline jobs/watch_pipeline.yaml --every 10m",
               "uae-ray watch --source s3://archive/ct --out s3://results/ct --pipeline jobs/watch_pipeline.yaml --once"])
    p.add_argument("--source", required=True, metavar="URI",
                   help="dicomweb+http://HOST:PORT/dicom-web, or an archive: s3://bucket/prefix or a folder")
    p.add_argument("--out", required=True, metavar="URI", help="output prefix (s3:// or a folder)")
    p.add_argument("--pipeline", required=True, metavar="YAML", help="the steps (schema: jobs/watch_pipeline.yaml)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="run one cycle and exit (for cron / a Kubernetes CronJob)")
    when.add_argument("--every", metavar="DURATION", help="a cycle every DURATION (30s, 10m, 2h); default: the "
                      "pipeline's schedule.every")
    p.add_argument("--since", type=int, metavar="CURSOR", help="discover from this change number instead of the "
                   "stored cursor (0: the whole feed, or every scan of an archive, again; done steps are still "
                   "skipped)")
    p.add_argument("--cycles", type=int, metavar="N", help="with --every: stop after N cycles")
    p.add_argument("--triton", metavar="URL", help="Triton HTTP endpoint; default: the local stack's")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address; default: $RAY_ADDRESS or the local "
                   "stack's")
    p.set_defaults(func=_cmd_watch)

    p = _verb(sub, "archive", "put a folder of scans into an archive (the local stack's S3 or any s3:// prefix)",
              "Uploads every file under SRC to DEST keeping relative paths (NIfTI/NRRD/MHA files and DICOM series "
              "folders are what the cohort jobs find there); each object is written atomically and files already "
              "there with the same size are skipped, so an interrupted upload resumes. With the local stack up, "
              "its S3 endpoint and keys are used; otherwise UAE_S3_* or ~/.config/uae-ray/config.yaml.",
              ["uae-ray archive upload my_scans/ s3://archive/ct",
               "uae-ray cohort embed --archive s3://archive/ct --out s3://results/ct"])
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = _verb(asub, "upload", "copy a local folder of scans to an archive",
              "Progress in bytes; a summary line at the end with the number of scans found at DEST.",
              ["uae-ray archive upload my_scans/ s3://archive/ct"])
    a.add_argument("src", metavar="SRC", help="local folder of scans")
    a.add_argument("dest", metavar="DEST", help="s3://bucket/prefix (or a folder)")
    p.set_defaults(func=_cmd_archive)

    p = _verb(sub, "cohort", "batch jobs over an archive (local folder or s3://), one Ray task per scan or pair",
              "Every job records a status per scan or pair in a manifest under --out, so a re-run does only what "
              "is missing or failed; tables are Parquet with hashed ids only (see docs/cohort.md).",
              ["uae-ray cohort embed --archive s3://pacs-export/ct --out s3://results/cohort1",
               "uae-ray cohort landmarks --archive s3://pacs-export/ct --out s3://results/cohort1 "
               "--template t.nii.gz --points points.csv"])
    csub = p.add_subparsers(dest="job", required=True, metavar="JOB")
    c = _verb(csub, "embed", "embed every scan of an archive and store the embeddings (Parquet)",
              "Scans are discovered under --archive (NIfTI/NRRD/MHA files and DICOM series folders).",
              ["uae-ray cohort embed --archive s3://bucket/archive --out s3://bucket/out",
               "uae-ray cohort embed --archive scans/ --out out/ --storage-tier full"])
    _add_archive_args(c)
    _add_cohort_run_args(c, "scan")
    c.add_argument("--storage-tier", choices=STORAGE_TIERS, default=DEFAULT_STORAGE_TIER,
                   help="how the maps are stored (default %(default)s: ~7.8 MB per 512x512x300 CT; compact-hq ~9 MB; "
                        "full: float16, ~135 MB; see docs/benchmarks.md, storage tiers)")
    c.add_argument("--workers", type=int, metavar="N",
                   help="embed actors (each holds the model or a Triton connection; default: one per free CPU "
                        "of the cluster)")
    c = _verb(csub, "query", "find a template's points in every stored scan, from the stored embeddings",
              "Coarse answer from the global level of each file (a row filter), then the fixed-point matcher in a "
              "window around it (unless --coarse-only). Writes <out>/query/points.parquet; reports seconds per "
              "1,000 scans.",
              ["uae-ray cohort query --template t.nii.gz --points points.csv --embeddings s3://bucket/out "
               "--out s3://bucket/query", "uae-ray cohort query --template t.nii.gz --points p.csv --embeddings out/ "
               "--out q/ --coarse-only"])
    c.add_argument("--template", required=True, metavar="IMAGE", help="the scan the points are given on")
    c.add_argument("--points", required=True, metavar="POINTS.csv", help="name,x,y,z on the template (LPS mm)")
    c.add_argument("--embeddings", required=True, metavar="URI", help="output prefix of a `cohort embed` run")
    c.add_argument("--out", required=True, metavar="URI", help="output prefix (local folder or s3://)")
    c.add_argument("--coarse-only", action="store_true", help="global level only (16 mm voxels, no found flag)")
    c.add_argument("--checkpoint", metavar="NAME|PATH", help=_CHECKPOINT_HELP)
    _add_cohort_run_args(c, "scan")
    c = _verb(csub, "landmarks", "detect a template's points in every scan of an archive",
              "Embeds the scans that have no stored embeddings of the model, then matches the template points "
              "into each; writes landmarks/index.parquet under --out.",
              ["uae-ray cohort landmarks --archive s3://bucket/archive --out s3://bucket/out --template t.nii.gz "
               "--points points.csv"])
    _add_archive_args(c)
    _add_cohort_run_args(c, "scan")
    c.add_argument("--template", required=True, metavar="IMAGE", help="the scan the points are given on")
    c.add_argument("--points", required=True, metavar="POINTS.csv", help="name,x,y,z on the template (LPS mm)")
    c.add_argument("--embeddings", metavar="URI", help="where stored embeddings live (default: --out)")
    _add_method_arg(c)
    c = _verb(csub, "track", "track baseline lesions into follow-up scans, one task per pair",
              "Pairs come from --pairs or, without it, consecutive scans of each patient of --archive by study "
              "date; writes tracks/index.parquet under --out.",
              ["uae-ray cohort track --archive s3://bucket/archive --out s3://bucket/out",
               "uae-ray cohort track --pairs pairs.csv --archive s3://bucket/archive --out s3://bucket/out"])
    _add_pair_job_args(c, "CSV with baseline,followup and lesions and/or lesion_mask columns (default: consecutive "
                       "scans of each patient of --archive, lesions.csv beside each baseline)")
    _add_cohort_run_args(c, "pair")
    c.add_argument("--no-extent", action="store_true", help="match the lesion centre only, even where a radius "
                   "or mask gives its extent")
    _add_method_arg(c)
    c = _verb(csub, "register", "rigid/affine transform (fixed -> moving) for every pair, one task per pair",
              "Pairs come from --pairs or consecutive scans of each patient; writes one .tfm per pair and "
              "transforms/index.parquet under --out.",
              ["uae-ray cohort register --archive s3://bucket/archive --out s3://bucket/out --transform affine"])
    _add_pair_job_args(c, "CSV with fixed,moving columns (optional fixed_modality, moving_modality; default: "
                       "consecutive scans of each patient of --archive)")
    c.add_argument("--transform", choices=["rigid", "affine"], default="rigid", help="transform kind")
    c.add_argument("--refine", action="store_true", help="refine each transform with a short Mattes-MI registration")
    c.add_argument("--fixed-modality", choices=["CT", "MR"], help="modality of every fixed scan (checked per pair)")
    c.add_argument("--moving-modality", choices=["CT", "MR"], help="modality of every moving scan (checked per pair)")
    c.add_argument("--same-patient", action="store_true", help="fail pairs whose scans are of different patients "
                   "(DICOM PatientID or meta.json 'patient')")
    _add_cohort_run_args(c, "pair")
    c = _verb(csub, "prelabel", "localize and segment organs in every scan from k annotated supports (MedLSAM)",
              "One task per scan on a pool of Ray actors that hold the models; writes a label map per scan, "
              "prelabel/index.parquet with a status per (scan, organ), QC images and an HTML report.",
              ["uae-ray cohort prelabel --archive s3://bucket/archive --out s3://bucket/out "
               "--support s1.nii.gz:s1_labels.nii.gz --organs parotid_gland_left,mandible"])
    c.add_argument("--archive", required=True, metavar="URI", help="s3://bucket/prefix or a local folder")
    _add_support_args(c, " (label k = the k-th)")
    c.add_argument("--out", required=True, metavar="URI", help="cohort output prefix: labels/<scan_id>.nii.gz, "
                   "prelabel/index.parquet, qc/prelabel.html, manifests/prelabel")
    c.add_argument("--boxes", choices=SEGMENT_BOX_MODES, default=SEGMENT_DEFAULT_BOX_MODE,
                   help="slice prompts, as segment")
    _add_localizer_args(c, "localizer of the boxes, as segment")
    _add_sam_args(c)
    c.add_argument("--report", metavar="URI", help="QC report (HTML; local path or s3:// URI; default: "
                   "<out>/qc/prelabel.html)")
    c.add_argument("--no-report", action="store_true", help="write neither the QC images nor the report")
    c.add_argument("--dicom-seg", action="store_true", help="also write <out>/dicom_seg/<scan_id>.dcm, a DICOM SEG "
                   "referencing the series, for every DICOM series scan (patient name and ID: the hashed patient id)")
    c.add_argument("--checkpoint", metavar="NAME|PATH", help=_CHECKPOINT_HELP)
    _add_cohort_run_args(c, "scan", " or a support could not be read")
    p.set_defaults(func=_cmd_cohort)

    p = _verb(sub, "bench", "benchmarks on ../shared/data writing JSON and a table",
              "Accuracy figures are measured on the test patients of a documented split (patients-v1); a model "
              "trained on a measured patient is refused (see docs/benchmarks.md).",
              ["uae-ray bench accuracy --part d --part abstention --max-targets 20 --out acc.json",
               "uae-ray bench speed --out speed.json"])
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    b = _verb(bsub, "accuracy", "landmark accuracy on the test patients of a split of ../shared/data",
              "Parts: (a) synthetic warps, (b)/(b') cross-patient organ centroids, (d) head-neck cross-patient, "
              "(e) CT<->MR, abstention (targets cropped so that structures leave the view); every method and "
              "baseline on the same points.",
              ["uae-ray bench accuracy --part d --part abstention --baseline identity --max-targets 20",
               "uae-ray bench accuracy --checkpoint my_model.pt --part a --out a.json"])
    _add_bench_io(b, "accuracy", seed=True)
    b.add_argument("--points-per-case", type=int, default=20, help="random body points per synthetic warp")
    _add_split_arg(b)
    b.add_argument("--part", action="append", dest="parts", choices=["a", "b", "d", "e", "abstention"],
                   help="part to run (repeatable; default: all): a synthetic warps, b cross-patient (+ b' whole "
                        "structures), d head-neck cross-patient, e CT<->MR, abstention")
    b.add_argument("--templates", type=int, default=3, help="head-neck templates of d and abstention")
    b.add_argument("--max-targets", type=int, metavar="N", help="at most N head-neck targets in d and abstention (the first by case id)")
    b.add_argument("--baseline", action="append", choices=["identity", "sitk", "elastix"], dest="baselines",
                   help="registration baseline to run (repeatable; default: identity, sitk and elastix)")
    b.add_argument("--no-baseline", action="store_true", help="skip every registration baseline")
    b.add_argument("--method", action="append", choices=MATCHING_METHODS, dest="methods",
                   help="matching method to measure (repeatable; default: all)")
    _add_embedder_args(b, storage_tier=True)
    b = _verb(bsub, "calibrate", "choose the fixed-point found rule on the train patients of a split",
              "Runs the abstention protocol on train-side patients and picks the rule under precision and "
              "out-of-view constraints.",
              ["uae-ray bench calibrate --checkpoint my_model.pt --targets 12"])
    _add_bench_io(b, "calibrate")
    _add_split_arg(b)
    b.add_argument("--templates", type=int, default=3, help="train-side head-neck templates")
    b.add_argument("--targets", type=int, default=20, help="train-side head-neck targets")
    _add_embedder_args(b)
    b = _verb(bsub, "tracking", "lesion tracking on synthetic longitudinal pairs of the shared CTs",
              "Each test CT gets a synthetic follow-up (breathing, lesion growth, warp, noise, crop) with exact "
              "truth; reports CPM@10mm, CPM@radius, MED and abstention per method.",
              ["uae-ray bench tracking --method fixed-point+extent"])
    _add_bench_io(b, "tracking", seed=True)
    b.add_argument("--points-per-case", type=int, default=8, help="organ / body pseudo-lesions per case")
    b.add_argument("--method", action="append", choices=TRACKING_BENCH_METHODS, dest="methods",
                   help="tracking method to measure (repeatable; default: all)")
    b.add_argument("--case", action="append", dest="cases", metavar="CASE_ID", help="only these cases (repeatable)")
    _add_split_arg(b)
    _add_embedder_args(b, storage_tier=True)
    b = _verb(bsub, "registration", "rigid/affine registration against known transforms (CT-CT, CT-MR)",
              "Moves every test CT (and the CT-MR pairs) by known transforms and crops; reports TRE, success "
              "(TRE < 10 mm) and time against SimpleITK MI baselines.",
              ["uae-ray bench registration --no-baseline --trials 2"])
    _add_bench_io(b, "registration", seed=True)
    b.add_argument("--points", type=int, default=100, help="TRE points per pair (in the overlap)")
    b.add_argument("--case", action="append", dest="cases", metavar="CASE_ID", help="only these cases (repeatable)")
    b.add_argument("--trials", type=int, help="at most this many known transforms per pair (smoke runs)")
    b.add_argument("--no-baseline", action="store_true", help="skip the SimpleITK MI baselines")
    b.add_argument("--no-refine", action="store_true", help="skip ours + MI refinement")
    b.add_argument("--no-ct-mr", action="store_true", help="skip the CT-MR pairs")
    b.add_argument("--ctmr-checkpoint", default="tiny-uae-v3", metavar="NAME|PATH",
                   help="model for the CT-MR pairs (default: %(default)s, the shipped cross-modality model)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (SimpleITK runs on 1)")
    _add_split_arg(b)
    _add_embedder_args(b, storage_tier=True)
    b = _verb(bsub, "localization", "few-shot organ boxes: head-neck leave-patient-out, or the curated cases",
              "--protocol headneck (default): the seven head-neck structures of --targets test patients of the split, "
              "from supports drawn from its training patients, for each k of --k: box IoU, wall distance and seconds "
              "per structure, seconds per scan. --protocol curated: leave-one-out over the other labelled cases "
              "(abdomen, thorax) for k = 1..max-k, per organ and method.",
              ["uae-ray bench localization --targets 20 --k 1 3 5",
               "uae-ray bench localization --protocol curated --max-k 5 --method embedding"])
    _add_bench_io(b, "localization", seed=True)
    b.add_argument("--protocol", choices=["headneck", "curated"], default="headneck", help="which benchmark")
    b.add_argument("--targets", type=int, default=20, help="headneck: test patients measured")
    b.add_argument("--k", type=int, nargs="+", default=[1, 3, 5], metavar="K", help="headneck: support counts")
    b.add_argument("--window-mm", type=float, metavar="MM", help="headneck: coarse-to-fine matching in windows of "
                   "this half-size around the global level's best voxel (default: the localizer's, 32; 0: whole-scan "
                   "searches)")
    _add_split_arg(b)
    b.add_argument("--max-k", type=int, default=5, help="largest number of support scans")
    b.add_argument("--method", action="append", choices=LOCALIZE_METHODS, dest="methods",
                   help="localizer to measure (repeatable; default: all)")
    b.add_argument("--embedding-mode", action="append", choices=EMBEDDING_MODES, dest="embedding_modes",
                   help="embedding-localizer mode to measure (repeatable; default: all)")
    _add_modality_args(b)
    b.add_argument("--min-ml", type=float, default=20.0, help="organs at least this large (ml) make the headline mean")
    b.add_argument("--cases", metavar="a,b", help="restrict to these case ids (smoke runs)")
    b.add_argument("--organs", metavar="a,b", help="restrict to these organs (smoke runs)")
    b.add_argument("--medlam-checkpoint", metavar="PATH", help="MedLAM weights (default: the shipped ones)")
    _add_embedder_args(b)
    b = _verb(bsub, "segmentation", "MedLSAM segmentation (WPL, SPL, ground-truth boxes): Dice, HD95, time per organ",
              "--protocol headneck (default): the seven head-neck structures of --targets test patients of the split, "
              "from the first k supports drawn from its training patients for each k of --k. --protocol curated: "
              "leave-one-out over the other labelled cases (abdomen, thorax).",
              ["uae-ray bench segmentation --targets 20 --k 5 --window-mm 32",
               "uae-ray bench segmentation --protocol curated --mode spl --mode gt-wpl --organs liver,spleen"])
    _add_bench_io(b, "segmentation")
    b.add_argument("--protocol", choices=["headneck", "curated"], default="headneck", help="which benchmark")
    b.add_argument("--targets", type=int, default=20, help="headneck: test patients measured")
    b.add_argument("--k", type=int, nargs="+", default=[5], metavar="K", help="headneck: support counts")
    b.add_argument("--window-mm", type=float, metavar="MM", help="coarse-to-fine matching of the embedding "
                   "localizer in windows of this half-size (default: the localizer's, 32; 0: whole-scan searches)")
    b.add_argument("--status", action="store_true", help="headneck: measure the masks' status instead (test "
                   "patients whole, cropped and of another body region; graded by --status-calibration)")
    b.add_argument("--status-calibration", metavar="PATH", help="status calibration JSON (default: the shipped one)")
    b.add_argument("--calibrate-status", metavar="OUT.json", help="headneck: fit the status calibration on the "
                   "training patients (whole, cropped, another region) and write it here")
    b.add_argument("--other", type=int, default=4, help="--status / --calibrate-status: scans of another region")
    _add_split_arg(b)
    b.add_argument("--mode", action="append", choices=SEGMENT_BENCH_MODES, dest="modes",
                   help="prompt mode to measure (repeatable; default: all)")
    b.add_argument("--min-ml", type=float, default=20.0, help="organs at least this large (ml) make the headline mean")
    b.add_argument("--cases", metavar="a,b", help="restrict the targets to these case ids (smoke runs)")
    b.add_argument("--organs", metavar="a,b", help="restrict to these organs (smoke runs)")
    b.add_argument("--method", choices=LOCALIZE_METHODS, default=LOCALIZE_DEFAULT_METHOD,
                   help="localizer of the wpl/spl boxes")
    b.add_argument("--embedding-mode", choices=EMBEDDING_MODES, help="embedding localizer mode (see localize)")
    b.add_argument("--medlam-checkpoint", metavar="PATH", help="MedLAM weights (default: the shipped ones)")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    _add_modality_args(b)
    _add_sam_args(b)
    _add_embedder_args(b)
    b = _verb(bsub, "speed", "seconds per scan (in-process and Triton) and per landmark",
              "Medians over --repeats runs; starts the local stack for the Triton figures unless --triton is given.",
              ["uae-ray bench speed --repeats 5 --out speed.json"])
    _add_bench_io(b, "speed")
    b.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is reported)")
    b.add_argument("--triton", metavar="URL", help="use this Triton server instead of starting the local stack")
    b.add_argument("--checkpoint", metavar="NAME|PATH", help=_CHECKPOINT_HELP)
    b.add_argument("--storage-only", action="store_true",
                   help="only the storage tiers (bytes, write and read seconds; no stack is started)")
    b = _verb(bsub, "cohort", "cohort embed throughput: scans/s and seconds per stage per worker count, faults",
              "Runs the real job (actors, in-process model, local storage) over --scans head-neck CTs on a local Ray "
              "instance per worker count; then kills one worker mid-job, and on a simulated cluster of --nodes nodes "
              "removes one mid-job, comparing the outputs with an undisturbed run; measures Triton's dynamic batching "
              "(1, 2 and 4 concurrent clients). Medians over --repeats runs.",
              ["uae-ray bench cohort --scans 8 --repeats 3 --out cohort.json"])
    _add_bench_io(b, "cohort")
    b.add_argument("--scans", type=int, default=8, help="scans per run (default %(default)s)")
    b.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N", help="worker counts (default 1 2)")
    b.add_argument("--repeats", type=int, default=3, help="runs per worker count (the median is reported)")
    b.add_argument("--nodes", type=int, default=3, help="nodes of the simulated cluster (0: skip it)")
    b.add_argument("--no-faults", action="store_true", help="skip the run with a worker killed")
    b.add_argument("--storage-tier", choices=STORAGE_TIERS, help="storage tier of the job (default: cohort embed's)")
    b.add_argument("--checkpoint", metavar="NAME|PATH", help=_CHECKPOINT_HELP)
    b.add_argument("--triton", metavar="URL", help="measure dynamic batching on this Triton server (default: start "
                                                   "the local stack's Triton for it)")
    b.add_argument("--no-triton", action="store_true", help="skip the Triton batching part")
    b = _verb(bsub, "watch", "one `uae-ray watch` cycle over new series: seconds per series per step, "
              "discovery and STOW-RS overhead",
              "Makes --series DICOM studies from head-neck CTs (two studies per patient, the follow-up moved), stores "
              "them in the stack's PACS, and times one cycle of the full pipeline (embed, landmarks, prelabel, track, "
              "register, SEG + SR sent back). Uses the running stack when UAE_PACS_URL is set, else starts the local "
              "stack (with its PACS) and stops it.",
              ["uae-ray bench watch --series 20 --out watch.json"])
    _add_bench_io(b, "watch")
    b.add_argument("--series", type=int, default=20, help="new series of the cycle, even (default %(default)s)")
    b.add_argument("--repeats", type=int, default=5, help="reads of the changes feed timed after the cycle")
    b.add_argument("--checkpoint", metavar="NAME|PATH", help=_CHECKPOINT_HELP)
    p.set_defaults(func=_cmd_bench)

    p = _verb(sub, "demo", "end-to-end demo on real sample CTs",
              "Starts the local stack (unless it runs already), runs every verb on sample scans and writes an "
              "HTML summary with each cross-patient detection and its error against the sample's own labels.",
              ["uae-ray demo --out demo-output"])
    p.add_argument("--out", default="demo-output", metavar="DIR", help="folder of the demo's outputs")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``uae-ray`` console script."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for chatty in ("highdicom", "dicomweb_client"):  # per-module / per-request chatter
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    if getattr(args, "device", "auto") not in ("auto", "cpu"):  # checked before any input is read
        from uae_ray.models.inference import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as e:
            logger.error("%s", e)
            return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except ImportError as e:  # an optional dependency (the "stack" extra) is not installed
        logger.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
