"""Where a run's files live: a local folder or a bucket (``gs://``), through ``etils.epath``.

Every file the library reads or writes (configs, results, plots, TensorBoard events, checkpoints,
split files, data) is named by a string that is either a local path or a URI such as
``gs://bucket/runs/in100``; :func:`path` turns it into an ``epath.Path``, the path type orbax
uses, which reads and writes both (buckets through gcsfs, or TensorFlow's file system where it
is installed). Local paths are made absolute, so that a run's files do not move with the working
directory; URIs are kept as they are.
"""

from __future__ import annotations

import os
import re

import fsspec.config
from etils import epath

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

# A run's folder changes under other processes (the other hosts' checkpoints, orbax writing
# through tensorstore, a run resumed on another machine): gcsfs's cached listings would go stale,
# so each listing asks the bucket (unless the user's fsspec configuration says otherwise).
for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URI (``gs://...``) rather than a local path."""
    return bool(_URI.match(os.fspath(location)))


def path(location: str | os.PathLike) -> epath.Path:
    """``location`` as an ``epath.Path``: absolute when local, as given when a URI."""
    location = os.fspath(location)
    return epath.Path(location if is_remote(location) else os.path.abspath(location))


def write_atomic(target: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``target`` so that a reader sees the old file or the new
    one, never a part: locally through a temporary file renamed over it; in a bucket by one
    upload, which object storage makes visible whole."""
    target = path(target)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(target):
        target.write_bytes(raw)
        return
    temporary = target.with_name(f"{target.name}.tmp")
    temporary.write_bytes(raw)
    os.replace(temporary, target)
