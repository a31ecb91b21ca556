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
  ``nodes`` worker nodes of one CPU): scans per node, and one node removed mid-job;
- ``triton`` (with a Triton URL): dynamic batching: the same prepared volume sent by 1, 2 and 4
  concurrent clients (volumes/s, and requests per forward pass from the server's statistics),
  and ``cohort embed`` through Triton with 2 workers (whose scans differ in shape).

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
#: Concurrent clients of the Triton batching part: with one model instance, requests queue
#: (and are batched) only while more clients than instances wait.
TRITON_CLIENTS = (1, 2, 4)


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
           triton_url: str | None = None) -> dict[str, Any]:
    """``cohort embed`` of the archive on the connected Ray instance (in-process model unless
    ``triton_url``)."""
    from uae_ray.cohort.embed import run_cohort_embed

    return run_cohort_embed(str(archive), str(out), triton_url, None, checkpoint=checkpoint, force=True,
                            workers=workers, tier=tier)


def _fresh_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """A new local Ray instance of ``num_cpus`` CPUs, or a connection to ``address``."""
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
        _fresh_ray(address=cluster.address)
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


def _concurrent(embedder, volume, clients: int, requests: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    before = embedder.batch_statistics()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: embedder.embed(volume), range(requests)))
    wall = time.perf_counter() - t0
    after = embedder.batch_statistics()
    inferences, executions = (after[k] - before[k] for k in ("inferences", "executions"))
    return {"clients": clients, "requests": requests, "volumes_per_s": requests / wall,
            "requests_per_forward_pass": inferences / max(executions, 1)}


def _triton(archive: Path, work: Path, triton_url: str, tier: str, requests: int) -> dict[str, Any]:
    from uae_ray.matching import prepare_for
    from uae_ray.serving import get_embedder
    from uae_ray.storage import discover_scans
    from uae_ray.storage.images import read_image_uri

    embedder = get_embedder(triton_url)
    scan = discover_scans(str(archive))[0]
    volume = prepare_for(read_image_uri(scan.uri), embedder, "CT").array
    embedder.embed(volume)  # warm-up
    same_shape = [_concurrent(embedder, volume, c, requests) for c in TRITON_CLIENTS]
    _fresh_ray(2)
    before = embedder.batch_statistics()
    job = _embed(archive, work / "triton", 2, None, tier, triton_url)
    after = embedder.batch_statistics()
    return {"url_model": embedder.version, "volume_shape": list(volume.shape), "same_shape": same_shape,
            "speedup_vs_1_client": {str(f["clients"]): f["volumes_per_s"] / same_shape[0]["volumes_per_s"]
                                    for f in same_shape},
            "cohort_embed_2_workers": {"scans_per_s": job["scans_per_s"], "failed": job["failed"],
                                       "requests_per_forward_pass": (after["inferences"] - before["inferences"])
                                       / max(after["executions"] - before["executions"], 1)}}


def run_cohort_bench(data_dir: str | Path, out: str | Path, n_scans: int = 8, workers: tuple[int, ...] = (1, 2),
                     repeats: int = 3, nodes: int = 3, checkpoint: str | None = None, tier: str | None = None,
                     faults: bool = True, triton_url: str | None = None, triton_requests: int = 8) -> dict[str, Any]:
    """Runs the benchmark (see the module docstring) and writes its JSON to ``out``; the
    ``triton`` part only with ``triton_url``."""
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
            if triton_url:
                result["triton"] = _triton(work / "archive", work, triton_url, tier, triton_requests)
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
    tri = result.get("triton")
    if tri:
        for fig in tri["same_shape"]:
            rows.append({"run": f"Triton, {fig['clients']} client(s), one shape", "scans/s": fig["volumes_per_s"],
                         "efficiency": "", "s/scan read/prepare/embed/write":
                         f"{fig['requests_per_forward_pass']:.2f} requests per forward pass", "ok": "yes"})
        job = tri["cohort_embed_2_workers"]
        rows.append({"run": "Triton, cohort embed, 2 workers", "scans/s": job["scans_per_s"], "efficiency": "",
                     "s/scan read/prepare/embed/write": f"{job['requests_per_forward_pass']:.2f} requests per "
                                                        "forward pass", "ok": "yes" if not job["failed"] else "NO"})
    for name, fig in faults:
        if fig:
            good = fig["finished"] and fig["manifest"]["all_ok_once"] and fig["outputs_vs_undisturbed"]["equal"]
            rows.append({"run": name, "scans/s": "", "efficiency": "",
                         "s/scan read/prepare/embed/write": f"resubmitted {fig['resubmitted']}, outputs equal: "
                                                            f"{fig['outputs_vs_undisturbed']['equal']}",
                         "ok": "yes" if good else "NO"})
    return format_table(rows, ["run", "scans/s", "efficiency", "s/scan read/prepare/embed/write", "ok"])
