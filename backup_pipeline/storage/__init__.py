"""Object storage behind one small interface: a local folder (file://) or Google Cloud Storage (gs://)."""

from backup_pipeline.storage.base import (
    PARTIAL_SUFFIX,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreRefused,
    StoreUnavailable,
    attachment_disposition,
    check_key,
)

__all__ = [
    "PARTIAL_SUFFIX",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StoreRefused",
    "StoreUnavailable",
    "attachment_disposition",
    "check_key",
]
