"""Storage: one API for local paths and ``s3://bucket/key`` URIs, Arrow schemas, Parquet I/O,
image discovery / reading behind URIs, and cohort manifests.

Endpoint and credentials come from ``UAE_S3_*`` environment variables or
``~/.config/uae-ray/config.yaml`` (see :mod:`uae_ray.storage.config`), never from code, and
are never logged. Importing this package does not import SimpleITK, minio or the volume code.
"""

from uae_ray.storage.config import S3Config, StorageConfigError, load_s3_config
from uae_ray.storage.embeddings import (
    embeddings_meta,
    embeddings_to_table,
    table_to_embeddings,
)
from uae_ray.storage.errors import S3UnreachableError, StorageError
from uae_ray.storage.images import (
    ScanRef,
    discover_scans,
    read_image_uri,
    read_labels_uri,
    scan_id_for,
)
from uae_ray.storage.manifest import Manifest, ManifestRecord, record_uri, write_record
from uae_ray.storage.objects import (
    delete,
    download,
    download_prefix,
    ensure_bucket,
    exists,
    filesystem_for,
    is_dir,
    list_uris,
    read_bytes,
    size,
    upload_file,
    write_bytes_atomic,
)
from uae_ray.storage.parquet import (
    read_dataset,
    read_files,
    read_embeddings,
    read_table,
    write_embeddings,
    write_table_atomic,
)
from uae_ray.storage.schemas import DETECTIONS, EMBEDDINGS, MANIFEST
from uae_ray.storage.uri import (
    basename,
    is_s3,
    join,
    parent,
    parse_s3,
    relative_to,
    uri_hash,
)

__all__ = [
    "DETECTIONS",
    "EMBEDDINGS",
    "MANIFEST",
    "Manifest",
    "ManifestRecord",
    "S3Config",
    "ScanRef",
    "StorageConfigError",
    "S3UnreachableError",
    "StorageError",
    "basename",
    "delete",
    "discover_scans",
    "download",
    "download_prefix",
    "embeddings_meta",
    "embeddings_to_table",
    "ensure_bucket",
    "exists",
    "filesystem_for",
    "is_dir",
    "is_s3",
    "join",
    "list_uris",
    "load_s3_config",
    "parent",
    "parse_s3",
    "read_bytes",
    "read_dataset",
    "read_files",
    "read_embeddings",
    "read_image_uri",
    "read_labels_uri",
    "read_table",
    "record_uri",
    "relative_to",
    "scan_id_for",
    "size",
    "table_to_embeddings",
    "upload_file",
    "uri_hash",
    "write_record",
    "write_bytes_atomic",
    "write_embeddings",
    "write_table_atomic",
]
