"""``uae-ray bench cohort``: throughput and scaling of ``cohort embed``, and faults survived.

Runs the real job (:func:`~uae_ray.cohort.embed.run_cohort_embed`, actors holding the model
in-process, local storage) over ``n_scans`` head-neck CTs of ``../shared/data``:

- ``scaling``: for each worker count, ``repeats`` runs on a local Ray instance of that many
  CPUs: wall seconds, scans/s, and seconds per stage (read, prepare, embed, write) summed over
  the scans; efficiency = scans/s(w) / (w x scans/s(1)), medians over the runs;
- ``faults``: one run in which one worker process is killed (``kill -9``) once the job has
  written its first outputs: the job must finish, every scan ``ok`` once in the manifest, the
  stored maps equal to those of an undisturbed run; ``resubmitted`` counts the scans run again;
- ``multi_node``: a simulated cluster (``ray.cluster_utils.Cluster``: a head with no CPU and
  ``nodes`` worker nodes of one CPU): scans per node, and one node removed mid-job.

The figures of Triton and S3 faults need the stack: they are measured by the fault tests
(``tests/cohort/test_cohort_faults.py``).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.bench.faults import compare_outputs, kill_actor, manifest_check, run_with_fault

logger = logging.getLogger(__name__)

STAGES = ("read", "prepare", "embed", "write")


def bench_archive(data_dir: str | Path, n_scans: int, folder: Path) -> list[str]:
    """A folder of links to the images of the first ``n_scans`` openkbp cases; their case ids."""
    from uae_ray.data.cases import load_cases

    cases = [c.case_id for c in load_cases(data_dir, "CT") if c.case_id.startswith("openkbp_")][:n_scans]
    if len(cases) < n_scans:
        raise ValueError(f"{data_dir}: {len(cases)} openkbp cases, {n_scans} asked")
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (folder / f"{case}.nii.gz").symlink_to(Path(data_dir, "cases", case, "image.nii.gz").resolve())
    return cases


def _embed(archive: Path, out: Path, workers: int, checkpoint: str | None, tier: str,
           ray_address: str | None = None) -> dict[str, Any]:
    from uae_ray.cohort.embed import run_cohort_embed

    return run_cohort_embed(str(archive), str(out), None, ray_address, checkpoint=checkpoint, force=True,
                            workers=workers, tier=tier)


def _fresh_ray(num_cpus: int, address: str | None = None) -> None:
    import ray

    ray.shutdown()
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)


def _scaling(archive: Path, work: Path, workers: tuple[int, ...], repeats: int, checkpoint: str | None,
             tier: str) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {}
    for w in workers:
        _fresh_ray(w)
        runs[w] = [_embed(archive, work / f"w{w}-r{r}", w, checkpoint, tier) for r in range(repeats)]
    out: dict[str, Any] = {}
    base = statistics.median(r["scans_per_s"] for r in runs[min(workers)]) / min(workers)
    for w, rs in runs.items():
        sps = statistics.median(r["scans_per_s"] for r in rs)
        n = rs[0]["done"] or 1
        out[str(w)] = {
            "scans_per_s": sps,
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "runs_scans_per_s": [r["scans_per_s"] for r in rs],
            "stage_s_per_scan": {s: statistics.median(r["stage_seconds"].get(s, 0.0) for r in rs) / n for s in STAGES},
            "efficiency": sps / (w * base),
            "failed": sum(r["failed"] for r in rs),
        }
    return out


def _worker_killed(archive: Path, work: Path, reference: Path, checkpoint: str | None, tier: str) -> dict[str, Any]:
    _fresh_ray(2)
    out = work / "killed"
    run = run_with_fault(lambda: _embed(archive, out, 2, checkpoint, tier), str(out / "embeddings"), 1,
                         lambda: kill_actor("EmbedWorker"))
    return _fault_figures(run, out, reference, archive)


def _fault_figures(run, out: Path, reference: Path, archive: Path) -> dict[str, Any]:
    from uae_ray.cohort.embed import EMBED_MANIFEST
    from uae_ray.storage import discover_scans

    summary = run.summary or {}
    return {
        "finished": run.error is None, "error": run.error, "fault_at_s": run.fault_at_s, "wall_s": run.wall_s,
        **run.detail,
        "resubmitted": summary.get("resubmitted"), "retries": summary.get("retries"),
        "per_node": summary.get("per_node"),
        "manifest": manifest_check(str(out / EMBED_MANIFEST), [s.scan_id for s in discover_scans(str(archive))]),
        "outputs_vs_undisturbed": compare_outputs(str(reference / "embeddings"), str(out / "embeddings")),
    }


def _multi_node(archive: Path, work: Path, reference: Path, nodes: int, checkpoint: str | None,
                tier: str) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(nodes)]
        cluster.wait_for_nodes()
        _fresh_ray(0, cluster.address)
        spread_out = work / "spread"
        spread = _embed(archive, spread_out, nodes, checkpoint, tier)
        removed_out = work / "node-removed"

        def remove() -> dict[str, Any]:
            cluster.remove_node(workers[-1], allow_graceful=False)
            return {"node_removed": workers[-1].node_id[:12]}

        run = run_with_fault(lambda: _embed(archive, removed_out, nodes, checkpoint, tier),
                             str(removed_out / "embeddings"), 1, remove)
        return {"nodes": nodes, "spread": {"per_node": spread["per_node"], "scans_per_s": spread["scans_per_s"],
                                           "failed": spread["failed"]},
                "node_removed": _fault_figures(run, removed_out, reference, archive)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_cohort_bench(data_dir: str | Path, out: str | Path, n_scans: int = 8, workers: tuple[int, ...] = (1, 2),
                     repeats: int = 3, nodes: int = 3, checkpoint: str | None = None, tier: str | None = None,
                     faults: bool = True) -> dict[str, Any]:
    """Runs the benchmark (see the module docstring) and writes its JSON to ``out``."""
    import ray

    from uae_ray.cohort.maps_io import DEFAULT_TIER
    from uae_ray.serving import get_embedder

    tier = tier or DEFAULT_TIER
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "cohort", "model_version": get_embedder(None, checkpoint=checkpoint).version,
                              "storage_tier": tier, "n_scans": n_scans, "repeats": repeats, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="uae-bench-cohort-") as tmp:
        work = Path(tmp)
        cases = bench_archive(data_dir, n_scans, work / "archive")
        result["cases"] = cases
        try:
            result["scaling"] = _scaling(work / "archive", work, workers, repeats, checkpoint, tier)
            reference = work / f"w{min(workers)}-r0"
            if faults:
                result["worker_killed"] = _worker_killed(work / "archive", work, reference, checkpoint, tier)
            if nodes > 1:
                result["multi_node"] = _multi_node(work / "archive", work, reference, nodes, checkpoint, tier)
        finally:
            ray.shutdown()
    result["bench_s"] = time.perf_counter() - t0
    write_json(out, result)
    return result


def cohort_table(result: dict[str, Any]) -> str:
    """Scaling rows (scans/s, efficiency, seconds per stage per scan) and fault rows."""
    rows = []
    for w, fig in result["scaling"].items():
        stages = " / ".join(f"{fig['stage_s_per_scan'][s]:.2f}" for s in STAGES)
        rows.append({"run": f"{w} worker(s)", "scans/s": fig["scans_per_s"], "efficiency": fig["efficiency"],
                     "s/scan read/prepare/embed/write": stages, "ok": "yes" if not fig["failed"] else "NO"})
    faults = [("kill -9 of a worker", result.get("worker_killed"))]
    multi = result.get("multi_node")
    if multi:
        rows.append({"run": f"{multi['nodes']} nodes: scans per node", "scans/s": multi["spread"]["scans_per_s"],
                     "efficiency": "", "s/scan read/prepare/embed/write": str(sorted(multi["spread"]["per_node"].values())),
                     "ok": "yes" if not multi["spread"]["failed"] else "NO"})
        faults.append(("a node removed", multi["node_removed"]))
    for name, fig in faults:
        if fig:
            good = fig["finished"] and fig["manifest"]["all_ok_once"] and fig["outputs_vs_undisturbed"]["equal"]
            rows.append({"run": name, "scans/s": "", "efficiency": "",
                         "s/scan read/prepare/embed/write": f"resubmitted {fig['resubmitted']}, outputs equal: "
                                                            f"{fig['outputs_vs_undisturbed']['equal']}",
                         "ok": "yes" if good else "NO"})
    return format_table(rows, ["run", "scans/s", "efficiency", "s/scan read/prepare/embed/write", "ok"])
