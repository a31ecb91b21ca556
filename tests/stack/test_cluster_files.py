"""cluster/ and model_repo/ files parse and agree with the local stack's names and ports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from uae_ray.serving import protocol as P
from uae_ray.stack import StackConfig
from uae_ray.stack.config import ENV_VARS, REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
K8S = CLUSTER / "k8s"
DEFAULTS = StackConfig()


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            if "kind" in doc and doc["kind"] != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict)
        if path.parent == K8S and doc.get("kind") not in (None, "Kustomization"):
            assert doc.get("apiVersion") and doc["metadata"].get("name")
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "uae-ray"


def test_kustomization_lists_existing_files() -> None:
    (kust,) = _docs(K8S / "kustomization.yaml")
    for name in kust["resources"]:
        assert (K8S / name).is_file(), name
    assert "s3-secret.example.yaml" not in kust["resources"] and "pacs-secret.example.yaml" not in kust["resources"]
    assert "watch-raycronjob.yaml" not in kust["resources"]  # needs a KubeRay feature gate


def test_configmap_points_at_the_services_on_the_local_stack_ports() -> None:
    objs = _k8s()
    data = objs[("ConfigMap", "uae-ray-config")]["data"]
    host, port = data["UAE_S3_ENDPOINT"].split(":")
    assert host.split(".")[0] == "minio" and int(port) == DEFAULTS.s3_port
    host, port = data["UAE_TRITON_URL"].split(":")
    assert host.split(".")[0] == "triton" and int(port) == DEFAULTS.triton_http_port
    host, port = data["UAE_RAY_ADDRESS"].split(":")
    assert host.split(".")[0] == "uae-ray-head-svc" and int(port) == DEFAULTS.ray_port
    assert data["RAY_AUTH_MODE"] == "disabled"
    minio_ports = {p["name"]: p["port"] for p in objs[("Service", "minio")]["spec"]["ports"]}
    assert minio_ports["s3"] == DEFAULTS.s3_port
    triton_ports = {p["name"]: p["port"] for p in objs[("Service", "triton")]["spec"]["ports"]}
    assert triton_ports == {"http": DEFAULTS.triton_http_port, "grpc": DEFAULTS.triton_grpc_port,
                            "metrics": DEFAULTS.triton_metrics_port}


def test_secret_and_env_names_are_the_stack_variables() -> None:
    objs = _k8s()
    secret = objs[("Secret", "uae-ray-s3")]
    assert set(secret["stringData"]) == {ENV_VARS["s3_access_key"], ENV_VARS["s3_secret_key"]}
    minio = objs[("Deployment", "minio")]["spec"]["template"]["spec"]["containers"][0]
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in minio["env"]}
    assert refs == set(secret["stringData"])
    triton = objs[("Deployment", "triton")]["spec"]["template"]["spec"]["containers"][0]
    assert triton["command"][-1] == "exec-triton"
    assert {e["name"] for e in triton["env"]} <= set(ENV_VARS.values())
    ray = objs[("RayCluster", "uae-ray")]["spec"]
    head = ray["headGroupSpec"]
    assert int(head["rayStartParams"]["port"]) == DEFAULTS.ray_port
    head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports["gcs-server"] == DEFAULTS.ray_port and head_ports["dashboard"] == DEFAULTS.ray_dashboard_port
    for group in [head] + ray["workerGroupSpecs"]:
        env_from = group["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "uae-ray-config"}} in env_from
        assert {"secretRef": {"name": "uae-ray-s3"}} in env_from
    (gpu,) = ray["workerGroupSpecs"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_watch_schedules_run_one_cycle_against_the_configured_pacs_without_overlap() -> None:
    from uae_ray.stack.config import ENV_PACS_PASSWORD, ENV_PACS_USER
    from uae_ray.watch import load_pipeline

    objs = _k8s()
    data = objs[("ConfigMap", "uae-ray-config")]["data"]
    assert data["UAE_PACS_URL"].endswith("/dicom-web") and data["UAE_WATCH_OUT"].startswith("s3://")
    assert set(objs[("Secret", "uae-ray-pacs")]["stringData"]) == {ENV_PACS_USER, ENV_PACS_PASSWORD}
    cron = objs[("CronJob", "uae-ray-watch")]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["suspend"] is True
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert container["command"] == ["uae-ray"] and args[0] == "watch" and "--once" in args
    assert args[args.index("--source") + 1] == "dicomweb+$(UAE_PACS_URL)"
    assert args[args.index("--out") + 1] == "$(UAE_WATCH_OUT)"
    mount = container["volumeMounts"][0]["mountPath"]
    assert args[args.index("--pipeline") + 1].startswith(mount)
    assert {"secretRef": {"name": "uae-ray-pacs", "optional": True}} in container["envFrom"]
    ray_cron = objs[("RayCronJob", "uae-ray-watch")]["spec"]
    entry = ray_cron["jobTemplate"]["entrypoint"].split()
    assert entry[:2] == ["uae-ray", "watch"] and "--once" in entry
    assert ray_cron["jobTemplate"]["clusterSelector"] == {"ray.io/cluster": "uae-ray"}
    head = objs[("RayCluster", "uae-ray")]["spec"]["headGroupSpec"]["template"]["spec"]
    assert any(v["configMap"]["name"] == pod["volumes"][0]["configMap"]["name"] for v in head["volumes"])
    assert head["containers"][0]["volumeMounts"][0]["mountPath"] == mount
    load_pipeline(REPO_ROOT / "jobs" / "watch_pipeline.yaml")  # the documented example is valid


def test_ray_cluster_launcher_config() -> None:
    (cfg,) = _docs(CLUSTER / "ray" / "cluster.yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])
    assert any(f"--port={DEFAULTS.ray_port}" in c for c in cfg["head_start_ray_commands"])
    assert any(f":{DEFAULTS.ray_port}" in c for c in cfg["worker_start_ray_commands"])


def _pbtxt(path: Path) -> str:
    lines = (line.split("#")[0].rstrip() for line in path.read_text().splitlines())
    return "\n".join(line for line in lines if line.strip())


def test_model_config_uses_the_protocol_names_and_gpu_variant_differs_only_in_kind() -> None:
    model_dir = REPO_ROOT / "model_repo" / P.MODEL_NAME
    cpu = _pbtxt(model_dir / "config.pbtxt")
    names = re.findall(r'name: "([^"]+)"', cpu)
    assert names == [P.MODEL_NAME, P.INPUT_VOLUME, P.OUTPUT_LOCAL, P.OUTPUT_GLOBAL, P.OUTPUT_SEMANTIC, P.OUTPUT_VERSION, P.OUTPUT_CONFIG]
    assert re.search(r"max_batch_size: [1-9]", cpu) and "dynamic_batching" in cpu and "kind: KIND_CPU" in cpu
    for key in (P.PARAM_CHECKPOINT, P.PARAM_NUM_THREADS):
        assert f'key: "{key}"' in cpu
    gpu = _pbtxt(model_dir / "configs" / "gpu.pbtxt")
    assert gpu.replace("kind: KIND_GPU\n    gpus: [ 0 ]", "kind: KIND_CPU") == cpu
