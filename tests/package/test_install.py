"""The single-scan verbs need only the core dependencies: with Ray, Triton's client, minio and
pytriton made unimportable, ``uae-ray landmarks`` runs on a real case; s3:// and --triton say
which extra to install. The pyproject keeps the services out of the core dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.shared import SHARED_DATA, needs_shared_data

ROOT = Path(__file__).resolve().parents[2]
STACK = ("ray", "tritonclient", "minio", "pytriton", "seaweedfs")

BLOCKED_CLI = f"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {STACK!r}:
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Blocker())
from uae_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_CLI, *argv], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), **env})


def test_core_dependencies_leave_the_services_out() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"])
    assert not any(name in core for name in ("ray", "tritonclient", "minio", "pytriton", "seaweedfs", "elastix"))
    assert {"stack", "bench", "test"} <= set(meta["optional-dependencies"])


@needs_shared_data
def test_landmarks_without_the_stack_installed(tmp_path: Path) -> None:
    case = SHARED_DATA / "cases" / "sts_002_ct"
    points = tmp_path / "p.csv"
    rows = (case / "landmarks.csv").read_text().splitlines()[:3]
    points.write_text("\n".join(rows) + "\n")
    out = _run(tmp_path, "landmarks", "--template", str(case / "image.nii.gz"), "--points", str(points),
               "--target", str(case / "image.nii.gz"), "--out", "d.csv", "--device", "cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "d.csv").read_text().count("\n") == len(rows) and (tmp_path / "d.mrk.json").is_file()


@needs_shared_data
def test_s3_and_triton_name_the_extra_to_install(tmp_path: Path) -> None:
    case = SHARED_DATA / "cases" / "sts_002_ct"
    s3 = {"UAE_S3_ENDPOINT": "127.0.0.1:9", "UAE_S3_ACCESS_KEY": "key12345", "UAE_S3_SECRET_KEY": "secret12345"}
    out = _run(tmp_path, "landmarks", "--template", "s3://bucket/t.nii.gz", "--points", str(case / "landmarks.csv"),
               "--target", "t.nii.gz", "--out", "d.csv", **s3)
    assert out.returncode == 2 and "pip install 'uae-ray[stack]'" in out.stderr and "Traceback" not in out.stderr
    out = _run(tmp_path, "landmarks", "--template", str(case / "image.nii.gz"), "--points", str(case / "landmarks.csv"),
               "--target", str(case / "image.nii.gz"), "--out", "d.csv", "--triton", "127.0.0.1:9")
    assert out.returncode == 2 and "--triton needs the Triton client" in out.stderr and "Traceback" not in out.stderr
