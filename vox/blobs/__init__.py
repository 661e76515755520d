from vox.blobs.base import BlobStore
from vox.blobs.local import LocalBlobStore

__all__ = ["BlobStore", "LocalBlobStore"]
