"""Storage URIs: local paths and `s3://` (AWS, MinIO, moto), fetched once per node, uploaded atomically.

```python
from kubetune.storage import localize, upload_dir

base = localize("s3://models/qwen2.5-0.5b/")  # a local folder, cached under cache_root()/s3
upload_dir(out / "merged", "s3://models/my-sft/")  # files first, the `_SUCCESS` manifest last; retried through outages
```
"""

from kubetune.storage.publish import UploadGaveUpError, upload_dir, upload_file
from kubetune.storage.s3 import (
    SUCCESS_MARKER,
    IncompleteUploadError,
    S3AccessError,
    S3NotFoundError,
    StorageError,
    complete_upload_stamp,
    endpoint_url,
    localize,
    s3_client,
)
from kubetune.storage.uri import is_s3, join, split_s3

__all__ = [
    "SUCCESS_MARKER",
    "IncompleteUploadError",
    "S3AccessError",
    "S3NotFoundError",
    "StorageError",
    "UploadGaveUpError",
    "complete_upload_stamp",
    "endpoint_url",
    "is_s3",
    "join",
    "localize",
    "s3_client",
    "split_s3",
    "upload_dir",
    "upload_file",
]
