"""moto's S3, kept on disk between runs: ``<workdir>/s3/<bucket>/<key>``.

moto holds objects in memory for the life of the process. :class:`S3Mirror` copies every object
the bucket holds to the work directory (only new or changed ones, after each task and at the end
of a run) so a user can open every artifact of a run, and preloads the bucket from that directory
at the start of the next run. ``runs/`` of earlier runs are not preloaded: no state reads another
run's artifacts, and they stay on disk for the user.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from recpipe.runs import RUNS_PREFIX

_SKIP_PRELOAD = (RUNS_PREFIX,)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"Expected an s3:// URI, got {uri!r}.")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def list_keys(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` (all pages)."""
    out: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Contents", []))
    return out


class S3Mirror:
    """Mirror of one moto bucket under ``root / bucket``."""

    def __init__(self, s3: Any, bucket: str, root: Path) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.dir = Path(root) / bucket
        self._etags: dict[str, str] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        path = (self.dir / key).resolve()
        if self.dir.resolve() not in path.parents:
            raise ValueError(f"S3 key {key!r} escapes the mirror directory {self.dir}.")
        return path

    def preload(self) -> int:
        """Upload the mirrored files (except earlier runs' artifacts) into the bucket; return the count."""
        if not self.dir.exists():
            return 0
        count = 0
        for path in sorted(self.dir.rglob("*")):
            if not path.is_file() or path.name.endswith(".recpipe-tmp"):
                continue
            key = path.relative_to(self.dir).as_posix()
            if key.startswith(_SKIP_PRELOAD):
                continue
            etag = self.s3.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes())["ETag"]
            self._etags[key] = etag
            count += 1
        return count

    def sync(self) -> int:
        """Write objects that are new or changed since the last sync; return how many were written."""
        with self._lock:
            written = 0
            for obj in list_keys(self.s3, self.bucket, ""):
                key, etag = obj["Key"], obj["ETag"]
                if self._etags.get(key) == etag or key.endswith("/"):
                    continue
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                path = self._path(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".recpipe-tmp")
                tmp.write_bytes(body)
                os.replace(tmp, path)
                self._etags[key] = etag
                written += 1
            return written

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` from the bucket and the mirror."""
        with self._lock:
            keys = [obj["Key"] for obj in list_keys(self.s3, self.bucket, prefix)]
            for start in range(0, len(keys), 1000):
                chunk = keys[start:start + 1000]
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})
            for key in keys:
                self._etags.pop(key, None)
            local = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.dir
            if local.is_dir():
                for path in sorted(local.rglob("*"), reverse=True):
                    if path.is_file():
                        path.unlink()
                    else:
                        path.rmdir()
            elif local.is_file():
                local.unlink()

    def local_path(self, uri_or_key: str) -> Path:
        """Where an object (``s3://`` URI or key) lives on disk."""
        key = parse_s3_uri(uri_or_key)[1] if uri_or_key.startswith("s3://") else uri_or_key
        return self._path(key)
