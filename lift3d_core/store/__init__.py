"""Content-addressed, immutable artifact store, on a local disk or an object store (``s3://bucket/prefix``).

Every stage output is stored under a key that is the SHA-256 of a canonical JSON key document (:mod:`.keys`), as
one Zarr v3 group packed in a content-named zip plus a manifest written last, the commit point (:mod:`.layout`).
Publication is create-only on every backend (:mod:`.backend`: a hard link locally, ``If-None-Match: *`` on S3), so
readers never see a partial artifact and two writers of one key leave one consistent artifact (:mod:`.core`).
Reads are lazy ranged reads (:mod:`.artifact`); per-key locks that outlive a crashed holder save duplicate work
(:mod:`.locking`); ``ls``, ``verify``, ``gc`` and quarantine are in :mod:`.maintenance`.

Layout under the store root::

    <root>/<stage>/<key[:2]>/<key>.<zip_sha[:16]>.zarr.zip   the arrays (sharded, zstd, crc32c chunks)
    <root>/<stage>/<key[:2]>/<key>.json                      manifest: key document, sizes, digests, the zip's name
    <root>/.locks/<stage>/<key>.lock                         per-key lock (an OS lock, or a lease on S3)
    <root>/.corrupt/<stage>/<key>.<utc>.*                    quarantined artifacts (kept for inspection)
"""

from lift3d_core.store.artifact import Artifact
from lift3d_core.store.core import DEFAULT_URL, ArtifactStore
from lift3d_core.store.errors import ArtifactNotFoundError, CorruptArtifactError, LockTimeoutError
from lift3d_core.store.keys import artifact_key, canonical_json, file_digest, key_from_doc
from lift3d_core.store.layout import chunk_layout
from lift3d_core.store.maintenance import ArtifactInfo, Problem

__all__ = [
    "DEFAULT_URL",
    "Artifact",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "CorruptArtifactError",
    "LockTimeoutError",
    "Problem",
    "artifact_key",
    "canonical_json",
    "chunk_layout",
    "file_digest",
    "key_from_doc",
]
