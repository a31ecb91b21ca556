"""The real local stack: up -> status (3 healthy processes, 4 with the PACS where Orthanc is
installed; ports answer) -> down (nothing left).

Uses the session ``stack`` fixture; the teardown test runs after every other test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from uae_ray.stack import StackConfig, StackError, stack_down, stack_status, stack_up
from uae_ray.paths import CLIENT_ENV_FILE
from uae_ray.stack.config import read_env_file
from uae_ray.stack.process import ProcessFiles, group_members, pid_alive, port_open

pytestmark = pytest.mark.stack

EXECUTABLES = {"ray": "ray", "triton": "tritonserver", "s3": "weed", "pacs": "Orthanc"}


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _service_ports(config: StackConfig) -> dict[str, list[int]]:
    from uae_ray.stack import SERVICES
    from uae_ray.stack.manager import default_services

    return {name: list(SERVICES[name](config).ports.values()) for name in default_services()}


def test_status_shows_every_service_healthy(stack) -> None:
    from uae_ray.stack import pacs

    status = stack_status(stack.config)
    assert status.healthy, status.table()
    assert [s.name for s in status.services] == ["s3", "triton", "ray"] + (["pacs"] if pacs.available() else [])
    for svc in status.services:
        assert svc.alive and svc.healthy and svc.pid
        os.kill(svc.pid, 0)  # a real process
        assert os.getpgid(svc.pid) == svc.pid, f"{svc.name} must lead its own process group"
        assert any(Path(arg).name == EXECUTABLES[svc.name] for arg in _cmdline(svc.pid)[:2])
        assert svc.log.is_file()
    for name, ports in _service_ports(stack.config).items():
        assert all(port_open("127.0.0.1", p) for p in ports), f"{name}: a port does not answer"
    assert stack.config.s3_secret_key not in status.table()


def test_the_pacs_answers_its_account_only_and_keeps_its_password_private(stack) -> None:
    import requests

    from uae_ray.stack import pacs

    if not pacs.available():
        pytest.skip(f"no PACS on this machine: {pacs.INSTALL_HINT}")
    env, config = stack.env, stack.config
    url = env["UAE_PACS_URL"]
    assert url == f"http://127.0.0.1:{config.pacs_http_port}/dicom-web"
    session = requests.Session()
    session.trust_env = False
    ok = session.get(f"{url}/studies", auth=(env["UAE_PACS_USER"], env["UAE_PACS_PASSWORD"]), timeout=10)
    assert ok.status_code == 200 and isinstance(ok.json(), list)
    assert session.get(f"{url}/studies", auth=(env["UAE_PACS_USER"], "wrong"), timeout=10).status_code == 401
    assert session.get(f"{url}/studies", timeout=10).status_code == 401
    config_file = pacs.pacs_dir(config) / "orthanc.json"
    assert config_file.stat().st_mode & 0o077 == 0
    password = env["UAE_PACS_PASSWORD"]
    for log in config.logs_dir.glob("*.log"):
        assert password not in log.read_text(errors="replace"), log
    assert password not in stack_status(config).table() and password not in repr(config)
    # the Debian package's own service is not running: every Orthanc here is the stack's
    orthancs = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_orthanc(int(p.name))]
    assert orthancs == [stack_status(config).service("pacs").pid], orthancs


def _is_orthanc(pid: int) -> bool:
    try:
        return Path(_cmdline(pid)[0]).name == "Orthanc"
    except OSError:
        return False


def test_services_answer_with_the_client_env(stack) -> None:
    from minio import Minio
    from minio.error import S3Error
    from ray.job_submission import JobSubmissionClient

    env = stack.env
    assert env["UAE_TRITON_URL"] == stack.config.triton_url
    client = Minio(env["UAE_S3_ENDPOINT"], access_key=env["UAE_S3_ACCESS_KEY"],
                   secret_key=env["UAE_S3_SECRET_KEY"], secure=False, region="us-east-1")
    client.make_bucket("stack-test")
    assert "stack-test" in [b.name for b in client.list_buckets()]
    wrong = Minio(env["UAE_S3_ENDPOINT"], access_key=env["UAE_S3_ACCESS_KEY"], secret_key="wrong-secret",
                  secure=False, region="us-east-1")
    with pytest.raises(S3Error):
        wrong.list_buckets()
    assert isinstance(JobSubmissionClient(env["RAY_ADDRESS"]).list_jobs(), list)


def test_ray_job_submission_sees_the_stack_env(stack) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(stack.env["RAY_ADDRESS"])
    check = ("import os, ray; ray.init(); "
             "assert ray.get(ray.remote(lambda: os.environ['UAE_S3_ENDPOINT']).remote()) == os.environ['EXPECTED']; "
             "assert os.environ['UAE_TRITON_URL'] and os.environ['UAE_S3_SECRET_KEY']")
    job = client.submit_job(entrypoint=f'python -c "{check}"',
                            runtime_env={"env_vars": {"EXPECTED": stack.env["UAE_S3_ENDPOINT"]}})
    deadline = time.monotonic() + 90
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.5)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-2000:]


def test_up_again_reuses_the_running_stack(stack) -> None:
    before = {s.name: s.pid for s in stack_status(stack.config).services}
    t0 = time.monotonic()
    after = stack_up(stack.config)
    assert time.monotonic() - t0 < 15
    assert {s.name: s.pid for s in after.services} == before


@pytest.mark.stack_teardown
def test_down_leaves_no_process(stack) -> None:
    config = stack.config
    status = stack_status(config)
    groups = {s.name: group_members(s.pid) for s in status.services}
    assert all(groups.values()), groups
    client = read_env_file(config.run_dir / CLIENT_ENV_FILE)  # every verb's settings, from any folder
    assert client["UAE_S3_ENDPOINT"] == config.s3_endpoint and client["UAE_TRITON_URL"] == config.triton_url
    assert (config.run_dir / CLIENT_ENV_FILE).stat().st_mode & 0o077 == 0  # the secret is the owner's only
    t0 = time.monotonic()
    after = stack_down(config)
    elapsed = time.monotonic() - t0
    assert not after.any_alive, after.table()
    for name, pids in groups.items():
        assert not group_members(status.service(name).pid), f"{name}: process group not empty"
        assert not [p for p in pids if pid_alive(p)], f"{name}: processes left"
        assert ProcessFiles(config.pids_dir, name).read() is None
    for name, ports in _service_ports(config).items():
        assert not any(port_open("127.0.0.1", p) for p in ports), f"{name}: a port still answers"
    assert elapsed < config.stop_timeout_s + 15
    assert not (config.run_dir / CLIENT_ENV_FILE).exists()


def test_a_failing_service_gives_a_clear_error_and_is_stopped(tmp_path: Path, free_port_config) -> None:
    repo = tmp_path / "models"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    (repo / "broken" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('boom')\n"
    )
    config = free_port_config(tmp_path / "run").replace(model_repository=repo, start_timeout_s=60.0)
    t0 = time.monotonic()
    with pytest.raises(StackError) as err:
        stack_up(config, ["triton"])
    message = str(err.value)
    assert "triton did not become healthy" in message and "exited" in message
    assert str(config.logs_dir / "triton.log") in message
    assert "boom" in (config.logs_dir / "triton.log").read_text()
    assert time.monotonic() - t0 < 60
    assert not stack_status(config, ["triton"]).any_alive
