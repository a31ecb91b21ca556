"""Builds a stored-embeddings archive for timing ``uae-ray cohort query``.

N scan files copied from the embeddings of the clinical-size CT of ``bench speed``
(itkelastix_chest on a 512x512x300 grid) in a storage tier, with an embed manifest marking
them ok (distinct scan ids; the coarse pass's cost depends on the file size, not its content).
The root may be a local folder or an ``s3://`` prefix (the ``UAE_S3_*`` settings).

    python docs/benchmarks/scripts/query_archive.py ../shared/data runs/qbench 200 compact
    uae-ray cohort query --template ../shared/data/cases/itkelastix_chest/image.nii.gz \
        --points POINTS.csv --embeddings runs/qbench --out runs/qbench-out --coarse-only
"""
import hashlib
import sys
from pathlib import Path

from uae_ray.bench.speed import clinical_size_ct
from uae_ray.cohort.embed import EMBED_MANIFEST
from uae_ray.cohort.maps_io import embeddings_uri, write_maps
from uae_ray.matching import embed_image
from uae_ray.serving import get_embedder
from uae_ray.storage import Manifest, join, read_bytes, write_bytes_atomic

data, root, n, tier = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
embedder = get_embedder(None)
maps = embed_image(clinical_size_ct(data), embedder, "CT")
manifest = Manifest(join(root, EMBED_MANIFEST))
data_bytes = None
for i in range(n):
    scan_id = hashlib.sha256(f"query-bench-{i}".encode()).hexdigest()[:16]
    uri = embeddings_uri(root, scan_id)
    if data_bytes is None:
        size = write_maps(uri, scan_id, maps, tier)
        data_bytes = read_bytes(uri)
    else:
        write_bytes_atomic(uri, data_bytes)
    manifest.record(scan_id, f"bench://{i}", "ok", None, embedder.version)
manifest.save()
print(f"{n} files of {size / 1e6:.2f} MB ({tier}) under {root}")
