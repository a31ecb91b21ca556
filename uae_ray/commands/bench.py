"""``uae-ray bench accuracy|calibrate|tracking|registration|localization|segmentation|speed|cohort|watch``:
run a benchmark, write JSON, print a table."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _data_dir(arg: str | None) -> Path:
    from uae_ray.data.cases import default_data_dir

    path = Path(arg) if arg else default_data_dir()
    if path is None or not (path / "manifest.csv").is_file():
        raise SystemExit("uae-ray bench: no shared data folder found; pass --data DIR (with manifest.csv)")
    return path


def _sam_trained_on(checkpoint: str | None) -> list[str] | None:
    """Training case ids recorded in a segment-anything checkpoint (None: an official file, whose
    training data are not ours)."""
    import torch

    from uae_ray.models.sam2d import resolve_sam_checkpoint

    path = resolve_sam_checkpoint(checkpoint)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an official .pth or a file load_sam2d will reject with its own message
        return None
    return data.get("meta", {}).get("trained_on") if isinstance(data, dict) else None


def _status_bench(args: argparse.Namespace, data: Path, segmenter, factory) -> int:
    """``bench segmentation --status`` (test side) or ``--calibrate-status OUT`` (train side)."""
    from uae_ray.bench.status_hn import run_status_hn, status_table
    from uae_ray.atomic import write_text_atomic
    from uae_ray.split import SplitError
    from uae_ray.tasks.segment.status import StatusCalibration

    k = max(args.k)
    if args.calibrate_status:
        fitted_on = {"sam": getattr(segmenter, "version", "?"), "embedding": args.checkpoint or "default",
                     "window_mm": args.window_mm, "k": k, "command": "uae-ray " + " ".join(sys.argv[1:])}
        result = run_status_hn(data, segmenter, factory, args.out, "train", split=args.split, n_targets=args.targets,
                               n_other=args.other, k=k, fitted_on=fitted_on)
        cal = StatusCalibration(**{**result["calibration"], "features": tuple(result["calibration"]["features"])})
        write_text_atomic(args.calibrate_status, cal.to_json())
        print(status_table(result) + f"\n\ncalibration: {args.calibrate_status}")
        return 0
    try:
        cal = StatusCalibration.load(args.status_calibration)
        result = run_status_hn(data, segmenter, factory, args.out, "test", cal, split=args.split,
                               n_targets=args.targets, n_other=args.other, k=k)
    except (SplitError, FileNotFoundError, ValueError) as exc:
        logger.error("uae-ray bench segmentation --status: %s", exc)
        return 2
    print(status_table(result))
    return 0


def _trained_on(checkpoint: str | None) -> list[str]:
    """Training case ids recorded in an embedding checkpoint (the default model's without one).

    Raises:
        SplitError: the checkpoint records none, so no figure of it can be called
            leave-patient-out.
    """
    from uae_ray.models.checkpoint import read_checkpoint, resolve_checkpoint
    from uae_ray.split import SplitError

    path = resolve_checkpoint(checkpoint)
    trained = read_checkpoint(path).get("meta", {}).get("trained_on")
    if trained is None:
        raise SplitError(f"{path}: the checkpoint records no training cases (meta 'trained_on'), so its figures "
                         "cannot be checked to be leave-patient-out")
    return list(trained)


def _embedder(args: argparse.Namespace):
    """The benchmark's embedder; seen through ``--storage-tier`` when given."""
    from uae_ray.serving import get_embedder

    return _tiered(get_embedder(args.triton, checkpoint=args.checkpoint, device=args.device), args)


def _tiered(embedder, args: argparse.Namespace):
    """``embedder`` whose maps go through ``--storage-tier``'s write/read code when given."""
    if getattr(args, "storage_tier", None):
        from uae_ray.cohort.maps_io import TierEmbedder

        return TierEmbedder(embedder, args.storage_tier)
    return embedder


def _bench_watch(data: Path, args: argparse.Namespace) -> dict:
    """``bench watch`` on the running stack (``UAE_PACS_URL`` set) or on a local stack it starts."""
    import os

    from uae_ray.bench.watch import run_watch_bench, watch_table

    def bench(env: dict[str, str]) -> dict:
        result = run_watch_bench(data, args.out, env, n_series=args.series, checkpoint=args.checkpoint,
                                 repeats=args.repeats)
        print(watch_table(result))
        return result

    if os.environ.get("UAE_PACS_URL"):
        return bench(dict(os.environ))
    from uae_ray.stack import StackConfig, client_env, ensure_credentials, pacs, stack_down, stack_up

    if not pacs.available():
        raise SystemExit(f"uae-ray bench watch: needs the stack's PACS: {pacs.INSTALL_HINT}")
    config = ensure_credentials(StackConfig.load())
    stack_up(config)
    try:
        env = client_env(config)
        os.environ.update(env)
        return bench(env)
    finally:
        stack_down(config)


def run(args: argparse.Namespace) -> int:
    from uae_ray.serving import get_embedder

    data = _data_dir(args.data)
    if args.bench == "accuracy":
        from uae_ray.bench.accuracy import accuracy_table, run_accuracy
        from uae_ray.bench.baselines import BASELINES
        from uae_ray.matching import METHODS

        from uae_ray.bench.accuracy import PARTS
        from uae_ray.split import SplitError

        embedder = _embedder(args)
        methods = tuple(args.methods or METHODS)
        baselines = () if args.no_baseline else tuple(args.baselines or BASELINES)
        try:
            result = run_accuracy(data, embedder, args.out, args.seed, args.points_per_case, baselines, methods,
                                  split=args.split, parts=tuple(args.parts or PARTS),
                                  trained_on=_trained_on(args.checkpoint), n_templates=args.templates,
                                  max_targets=args.max_targets)
        except SplitError as exc:
            logger.error("uae-ray bench accuracy: %s", exc)
            return 2
        print(accuracy_table(result))
    elif args.bench == "calibrate":
        from uae_ray.bench.calibrate import calibration_table, run_calibration

        embedder = get_embedder(args.triton, checkpoint=args.checkpoint, device=args.device)
        result = run_calibration(data, embedder, args.out, args.split, args.templates, args.targets)
        print(calibration_table(result))
    elif args.bench == "tracking":
        from uae_ray.bench.tracking import TRACK_METHODS, run_tracking, tracking_table

        from uae_ray.split import SplitError

        embedder = _embedder(args)
        methods = tuple(args.methods or TRACK_METHODS)
        try:
            result = run_tracking(data, embedder, args.out, args.seed, args.points_per_case, methods,
                                  tuple(args.cases) if args.cases else None, split=args.split,
                                  trained_on=_trained_on(args.checkpoint))
        except SplitError as exc:
            logger.error("uae-ray bench tracking: %s", exc)
            return 2
        print(tracking_table(result))
    elif args.bench == "registration":
        from uae_ray.bench.registration import registration_table, run_registration

        embedder = _embedder(args)
        # CT-MR needs the cross-modality model, in-process (a Triton server serves one model).
        ctmr = None if args.no_ct_mr else _tiered(get_embedder(None, checkpoint=args.ctmr_checkpoint), args)
        from uae_ray.split import SplitError

        try:
            trained = {"ct_ct": _trained_on(args.checkpoint)}
            if ctmr is not None:
                trained["ct_mr"] = _trained_on(args.ctmr_checkpoint)
            result = run_registration(
                data, embedder, args.out, args.seed, args.points, baselines=not args.no_baseline,
                refine=not args.no_refine, ctmr_embedder=ctmr, cases=tuple(args.cases) if args.cases else None,
                max_trials=args.trials, threads=args.threads, split=args.split, trained_on=trained,
            )
        except SplitError as exc:
            logger.error("uae-ray bench registration: %s", exc)
            return 2
        print(registration_table(result))
    elif args.bench == "localization" and args.protocol == "headneck":
        from uae_ray.bench.localization_hn import localization_hn_table, run_localization_hn

        embedder = get_embedder(args.triton, checkpoint=args.checkpoint, device=args.device)
        variant = (args.embedding_modes or ["transfer"])[0]
        result = run_localization_hn(data, embedder, args.out, split=args.split, n_targets=args.targets,
                                     ks=tuple(args.k), seed=args.seed, variant=variant,
                                     trained_on=_trained_on(args.checkpoint), window_mm=args.window_mm)
        print(localization_hn_table(result))
    elif args.bench == "localization":
        from uae_ray.bench.localization import BENCH_METHODS, EMBEDDING_VARIANTS, localization_table, per_organ_table
        from uae_ray.bench.localization import run_localization

        methods = tuple(args.methods or BENCH_METHODS)
        embedder = get_embedder(args.triton, checkpoint=args.checkpoint, device=args.device) if "embedding" in methods else None
        split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
        result = run_localization(
            data, embedder, args.out, seed=args.seed, max_k=args.max_k, methods=methods, modality=args.modality,
            min_ml=args.min_ml, cases=split(args.cases), organs=split(args.organs),
            medlam_checkpoint=args.medlam_checkpoint, variants=tuple(args.embedding_modes or EMBEDDING_VARIANTS),
            support_modality=args.support_modality,
        )
        print(localization_table(result))
        for method in sorted(result["per_organ"]):
            if "/cut-" not in method:
                print(f"\nper organ, {method}, all available supports:")
                print(per_organ_table(result, method))
    elif args.bench == "segmentation":
        from uae_ray.bench.segmentation import MODES, per_organ_table, run_segmentation, segmentation_table
        from uae_ray.api.models import make_localizer_factory, make_segmenter

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
        segmenter = make_segmenter(args.triton, args.sam_checkpoint, args.sam_kind)
        factory = make_localizer_factory(args.method, args.triton, args.checkpoint, args.medlam_checkpoint,
                                         args.embedding_mode, window_mm=args.window_mm)
        name = args.method if args.method == "medlam" else f"embedding/{args.embedding_mode or 'default'}"
        if args.window_mm and args.method != "medlam":
            name += f"/window-{args.window_mm:g}mm"
        if args.protocol == "headneck" and (args.status or args.calibrate_status):
            return _status_bench(args, data, segmenter, factory)
        if args.protocol == "headneck":
            from uae_ray.bench.segmentation_hn import run_segmentation_hn, segmentation_hn_table
            from uae_ray.split import SplitError

            try:
                trained = {getattr(segmenter, "version", "segment-anything"): _sam_trained_on(args.sam_checkpoint)}
                if args.method != "medlam":
                    trained[f"embedding {args.checkpoint or 'default'}"] = _trained_on(args.checkpoint)
                result = run_segmentation_hn(data, segmenter, factory, args.out, split=args.split,
                                             n_targets=args.targets, ks=tuple(args.k), modes=tuple(args.modes or MODES),
                                             localizer_name=name, trained_on=trained)
            except SplitError as exc:
                logger.error("uae-ray bench segmentation: %s", exc)
                return 2
            print(segmentation_hn_table(result))
            return 0
        result = run_segmentation(data, segmenter, factory, args.out, modes=tuple(args.modes or MODES),
                                  min_ml=args.min_ml, cases=split(args.cases), organs=split(args.organs),
                                  localizer_name=name, modality=args.modality,
                                  support_modality=args.support_modality)
        print(segmentation_table(result))
        print("\nper organ (Dice), organs of at least %.0f ml:" % args.min_ml)
        print(per_organ_table(result))
    elif args.bench == "cohort":
        from uae_ray.bench.cohort import cohort_table, run_cohort_bench

        def bench(triton_url: str | None) -> dict:
            return run_cohort_bench(data, args.out, n_scans=args.scans, workers=tuple(args.workers),
                                    repeats=args.repeats, nodes=args.nodes, checkpoint=args.checkpoint,
                                    tier=args.storage_tier, faults=not args.no_faults, triton_url=triton_url)

        if args.triton or args.no_triton:
            result = bench(args.triton)
        else:
            from uae_ray.stack import StackConfig, client_env, ensure_credentials, stack_down, stack_up

            config = ensure_credentials(StackConfig.load())
            stack_up(config, ["triton"])
            try:
                result = bench(client_env(config)["UAE_TRITON_URL"])
            finally:
                stack_down(config, ["triton"])
        print(cohort_table(result))
    elif args.bench == "watch":
        result = _bench_watch(data, args)
    else:
        from uae_ray.bench.speed import run_speed, speed_table

        local = get_embedder(None, checkpoint=args.checkpoint)
        if args.storage_only:
            result = run_speed(data, local, None, args.out, args.repeats, storage_only=True)
        elif args.triton:
            result = run_speed(data, local, get_embedder(args.triton), args.out, args.repeats)
        else:
            from uae_ray.stack import StackConfig, client_env, ensure_credentials, stack_down, stack_up

            config = ensure_credentials(StackConfig.load())
            stack_up(config, ["triton"])
            try:
                triton = get_embedder(client_env(config)["UAE_TRITON_URL"])
                result = run_speed(data, local, triton, args.out, args.repeats)
            finally:
                stack_down(config, ["triton"])
        print(speed_table(result))
    print(f"\nJSON: {args.out}")
    return 0
