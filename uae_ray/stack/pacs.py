"""The PACS of the local stack: Orthanc with its DICOMweb plugin (Debian packages ``orthanc``
and ``orthanc-dicomweb``; ``make setup`` installs them where it runs as root with apt).

Storage and index live in ``<run_dir>/pacs/db``; ``<run_dir>/pacs/orthanc.json`` (mode 0600)
holds the configuration with the one account of the stack (HTTP basic authentication on every
request). Orthanc 1.10 has no bind-address option: it listens on every interface but, with
``RemoteAccessAllowed: false``, answers loopback clients only. Its DICOM (DIMSE) listener is
off: the stack speaks DICOMweb (QIDO-RS, WADO-RS, STOW-RS at ``/dicom-web``) and Orthanc's REST
API (the changes feed ``watch`` reads). The Debian package's own system service is never
started (the install step denies service starts).
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from uae_ray.stack.config import StackConfig, StackError, write_private_file
from uae_ray.stack.service import ServiceSpec, base_env, ports_of

NAME = "pacs"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = ("install the Debian packages orthanc and orthanc-dicomweb (`make setup` does it when run as "
                "root with apt)")


def orthanc_executable() -> str | None:
    """Path of the ``Orthanc`` binary, or ``None`` when it is not installed."""
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


def available() -> bool:
    """Orthanc and its DICOMweb plugin are installed on this machine."""
    return orthanc_executable() is not None and DICOMWEB_PLUGIN.is_file()


def pacs_dir(config: StackConfig) -> Path:
    """Working folder of the PACS (``<run_dir>/pacs``)."""
    return config.run_dir / "pacs"


def orthanc_config(config: StackConfig) -> dict:
    """The Orthanc configuration for ``config`` (contains the account: write it privately)."""
    if not config.has_pacs_credentials:
        raise StackError("PACS credentials are not set (call ensure_credentials first)")
    db = str(pacs_dir(config) / "db")
    return {
        "Name": "uae-ray",
        "StorageDirectory": db,
        "IndexDirectory": db,
        "HttpPort": config.pacs_http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {config.pacs_user: config.pacs_password},
        "DicomServerEnabled": False,
        "HttpDescribeErrors": True,
        "StableAge": max(1, int(round(config.pacs_stable_age_s))),
        "SaveJobs": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": f"{config.host}:{config.pacs_http_port}", "Ssl": False},
    }


def authorization(user: str, password: str) -> str:
    """The HTTP basic ``Authorization`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def healthy(config: StackConfig, timeout_s: float = 2.0) -> bool:
    """An authenticated ``GET /dicom-web/studies`` (QIDO-RS) answers 200 or 204."""
    if not config.has_pacs_credentials:
        return False
    request = urllib.request.Request(f"{config.pacs_url}/dicom-web/studies?limit=1",
                                     headers={"Authorization": authorization(config.pacs_user, config.pacs_password),
                                              "Accept": "application/dicom+json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            return resp.status in (200, 204)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _prepare(config: StackConfig) -> None:
    if not available():
        raise StackError(f"the PACS needs Orthanc and its DICOMweb plugin: {INSTALL_HINT}")
    (pacs_dir(config) / "db").mkdir(parents=True, exist_ok=True)
    write_private_file(pacs_dir(config) / "orthanc.json", json.dumps(orthanc_config(config), indent=1))


def service(config: StackConfig) -> ServiceSpec:
    """Orthanc as a :class:`ServiceSpec`."""
    return ServiceSpec(
        name=NAME,
        command=[orthanc_executable() or "Orthanc", str(pacs_dir(config) / "orthanc.json")],
        env=base_env(),
        cwd=config.run_dir,
        url=f"{config.pacs_url}/dicom-web",
        ports=ports_of(config, ("pacs_http_port",)),
        healthy=lambda: healthy(config),
        prepare=lambda: _prepare(config),
        stop_timeout_s=config.stop_timeout_s,
    )
