"""A DICOMweb PACS as the source of ``uae-ray watch`` and the destination of its results
(``dicomweb-client``: QIDO-RS to search, WADO-RS to fetch, STOW-RS to store).

Discovery: with an Orthanc PACS, the changes feed (``/changes``, ``StableStudy`` events: studies
that received no new instance for Orthanc's ``StableAge``); the cursor is the feed's sequence
number, and a study's patient and series come from Orthanc's REST API. Credentials: ``UAE_PACS_USER`` / ``UAE_PACS_PASSWORD``, the ``pacs`` section of the user
config file, or the local stack's generated ``pacs.env`` (see :mod:`uae_ray.stack.config`);
never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEME = "dicomweb+"
#: Changes read per request of the Orthanc feed.
CHANGES_PAGE = 500


class PacsError(RuntimeError):
    """The PACS cannot be reached or refused a request; one line naming the URL, no secrets."""


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study."""

    study_uid: str
    series_uid: str
    modality: str
    instances: int
    description: str = ""


@dataclass(frozen=True)
class StudyInfo:
    """A study's identity and date (PatientID is hashed by the caller as soon as it is read)."""

    study_uid: str
    patient_id: str
    study_date: str
    study_time: str


def parse_source(uri: str) -> str:
    """``dicomweb+http://host:port/dicom-web`` -> ``http://host:port/dicom-web``.

    Raises:
        ValueError: Not a ``dicomweb+http(s)://`` URI.
    """
    if not uri.startswith(SCHEME) or not uri[len(SCHEME):].startswith(("http://", "https://")):
        raise ValueError(f"{uri}: a DICOMweb source is dicomweb+http://HOST:PORT/PATH (or dicomweb+https://)")
    return uri[len(SCHEME):].rstrip("/")


def pacs_credentials() -> tuple[str | None, str | None]:
    """The PACS account from the environment, the user config file or the local stack."""
    from uae_ray.stack.config import StackConfig

    config = StackConfig.load()
    return config.pacs_user, config.pacs_password


class DicomWebPacs:
    """A DICOMweb endpoint (and, for Orthanc, its REST root for the changes feed).

    Args:
        url: The DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        user / password: HTTP basic credentials (``None``: no authentication).
        timeout_s: Per-request timeout.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None, timeout_s: float = 60.0):
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # loopback and hospital PACS: never through a proxy
        if user and password:
            self.session.auth = (user, password)
        self.timeout_s = timeout_s
        self.client = DICOMwebClient(self.url, session=self.session, timeout=timeout_s)

    @classmethod
    def from_source(cls, uri: str) -> DicomWebPacs:
        """The PACS of a ``dicomweb+http://...`` source, with the configured credentials."""
        user, password = pacs_credentials()
        return cls(parse_source(uri), user, password)

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            hint = " (check UAE_PACS_USER / UAE_PACS_PASSWORD)" if status in (401, 403) else ""
            raise PacsError(f"PACS {self.url}: {what} refused (HTTP {status}){hint}") from None
        except requests.RequestException as e:
            raise PacsError(f"PACS {self.url}: {what} failed, the PACS cannot be reached ({type(e).__name__})") from None

    @property
    def rest_root(self) -> str:
        """Orthanc's REST root: the DICOMweb URL without its last path element."""
        return self.url.rsplit("/", 1)[0]

    def _get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        def get():
            resp = self.session.get(f"{self.rest_root}{path}", params=params, timeout=self.timeout_s)
            resp.raise_for_status()
            return resp.json()

        return self._call(f"GET {path}", get)

    def is_orthanc(self) -> bool:
        """Whether the server answers Orthanc's ``/system`` (the changes feed is then used)."""
        try:
            info = self._get_json("/system")
        except PacsError:
            return False
        return isinstance(info, dict) and "Version" in info and "DicomAet" in info

    # -- discovery ------------------------------------------------------------------------
    def stable_studies_since(self, seq: int) -> tuple[list[str], int]:
        """Orthanc ids of the studies that became stable after change ``seq``, in feed order
        without repeats, and the feed's last sequence number."""
        ids: list[str] = []
        last = seq
        while True:
            page = self._get_json("/changes", {"since": last, "limit": CHANGES_PAGE})
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "StableStudy" and change["ID"] not in ids:
                    ids.append(change["ID"])
            last = int(page.get("Last", last))
            if page.get("Done", True):
                break
        return ids, last

    def study(self, orthanc_id: str) -> tuple[StudyInfo, list[SeriesInfo]] | None:
        """A study's identity and its series (Orthanc's REST API: a study there is one
        (patient, StudyInstanceUID), so a pseudonymised copy of a study is a study of its own);
        ``None`` when it was deleted since the change was logged."""
        try:
            study = self._get_json(f"/studies/{orthanc_id}")
        except PacsError as e:
            if "HTTP 404" in str(e):
                return None
            raise
        tags, patient = study.get("MainDicomTags", {}), study.get("PatientMainDicomTags", {})
        info = StudyInfo(tags["StudyInstanceUID"], patient.get("PatientID", ""), tags.get("StudyDate", ""),
                         tags.get("StudyTime", ""))
        series = []
        for sid in study.get("Series", []):
            s = self._get_json(f"/series/{sid}")
            st = s.get("MainDicomTags", {})
            series.append(SeriesInfo(info.study_uid, st.get("SeriesInstanceUID", ""), st.get("Modality", "").upper(),
                                     len(s.get("Instances", [])), st.get("SeriesDescription", "")))
        return info, series

    # -- retrieval and storage ---------------------------------------------------------------
    def retrieve_series(self, series: SeriesInfo, folder: Path) -> list[Path]:
        """Fetches every instance of a series (WADO-RS) into ``folder`` (local, created)."""
        datasets = self._call("WADO-RS series retrieve", self.client.retrieve_series,
                              series.study_uid, series.series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, ds in enumerate(datasets):
            path = folder / f"{k:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        return files

    def store(self, datasets: list) -> None:
        """Stores instances with STOW-RS.

        Raises:
            PacsError: The PACS refused or could not be reached.
        """
        response = self._call("STOW-RS", self.client.store_instances, datasets=datasets)
        failed = getattr(response, "FailedSOPSequence", None)
        if failed:
            raise PacsError(f"PACS {self.url}: STOW-RS refused {len(failed)} of {len(datasets)} instances")
