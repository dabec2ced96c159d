"""Where a shard build writes: a local folder (``os`` calls, atomic rename) or any fsspec URL (an upload is the
commit), with patentclip's retry rule on every object-store call and a clear error naming endpoint, bucket and
access key id when the store refuses the credentials."""
from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import fsspec

from patentclip.plugins.remote_io import is_remote, retry


def _join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def storage_options_from(endpoint_url: Optional[str] = None, region: Optional[str] = None,
                         profile: Optional[str] = None) -> Dict[str, Any]:
    """s3fs options from CLI flags; without flags s3fs reads the standard AWS variables (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``)."""
    opts: Dict[str, Any] = {}
    client: Dict[str, Any] = {}
    if endpoint_url:
        client["endpoint_url"] = endpoint_url
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    if profile:
        opts["profile"] = profile
    return opts


def _retry(fn, what: str):
    """Call ``fn`` with patentclip's retry rule (plugins/remote_io.py: ``PATENTCLIP_IO_RETRIES`` retries, default 8,
    exponential backoff from ``PATENTCLIP_IO_BACKOFF``); a missing file or a refused permission is not retried."""
    return retry(fn, what, give_up=(FileNotFoundError, PermissionError))


class StorageAccessError(PermissionError):
    """The object store refused the credentials or the request; the message names the endpoint, the bucket and the
    access key id (never the secret)."""


def describe_access(fs, url: str) -> str:
    """``endpoint E, bucket B, access key id K`` of an s3fs filesystem (what a refusal message shows)."""
    endpoint = key_id = None
    try:
        endpoint = fs.s3.meta.endpoint_url
        key_id = fs.s3._request_signer._credentials.access_key  # the key id the request was signed with
    except Exception:  # not connected, not s3fs, or no credentials found at all
        pass
    if not endpoint:
        endpoint = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    key_id = key_id or getattr(fs, "key", None) or os.environ.get("AWS_ACCESS_KEY_ID") or "none found"
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    return f"endpoint {endpoint or 'the default AWS endpoint'}, bucket {bucket}, access key id {key_id}"


class Output:
    """The output location: a local folder (``os`` calls, atomic rename) or an fsspec URL (upload = commit)."""

    def __init__(self, out, storage_options: Optional[Dict[str, Any]] = None):
        s = str(out)
        if s.startswith("file://"):
            s = s[len("file://"):]
        self.url = s.rstrip("/") if is_remote(s) else str(Path(s))
        self.local = not is_remote(s)
        self.storage_options = dict(storage_options or {})
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            if self.local:
                self._fs = fsspec.filesystem("file")
            else:
                self._fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._fs

    def path(self, *parts: str) -> str:
        return _join(self.url, *parts)

    def refused(self, exc: PermissionError, what: str,
                kept: str = "Shards uploaded before are complete: run the build again to resume."
                ) -> StorageAccessError:
        """A clear error for a request the object store refused (wrong key or secret, no permission)."""
        reason = str(exc).strip() or type(exc).__name__
        return StorageAccessError(
            f"{what}: the object store refused the request ({describe_access(self.fs, self.url)}): {reason}. Check "
            f"the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile), the endpoint "
            f"(--endpoint-url or AWS_ENDPOINT_URL) and the bucket's permissions. {kept}")

    def check_access(self) -> None:
        """For a remote output: list it once before any work, so that wrong credentials are refused at once."""
        if self.local:
            return
        try:
            _retry(lambda: self.fs.ls(self._fspath(self.url), refresh=True), f"list {self.url}/")
        except FileNotFoundError:
            pass  # a new prefix
        except PermissionError as exc:
            raise self.refused(exc, f"cannot write shards to {self.url}", "Nothing was written.") from None

    def _fspath(self, p: str) -> str:
        """The path as the filesystem object wants it (no protocol)."""
        if self.local:
            return p
        return self.fs._strip_protocol(p)

    def makedirs(self, *parts: str) -> None:
        if self.local:
            os.makedirs(self.path(*parts), exist_ok=True)

    def write_bytes(self, rel: Sequence[str], data: bytes) -> None:
        """Write a small file atomically (local: temp + rename; remote: one PUT), with retries remotely."""
        p = self.path(*rel)
        if self.local:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + f".tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
            return
        try:
            _retry(lambda: self.fs.pipe_file(self._fspath(p), data), f"write {p}")
        except PermissionError as exc:
            raise self.refused(exc, f"cannot write {p}") from None

    def write_json(self, rel: Sequence[str], obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))

    def read_bytes(self, rel: Sequence[str]) -> Optional[bytes]:
        p = self.path(*rel)
        try:
            if self.local:
                with open(p, "rb") as f:
                    return f.read()
            return self.fs.cat_file(self._fspath(p))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list_files(self, *rel: str) -> Dict[str, int]:
        """name -> size of the files directly in a folder (empty when it does not exist)."""
        p = self.path(*rel)
        if self.local:
            try:
                return {e.name: e.stat().st_size for e in os.scandir(p) if e.is_file()}
            except FileNotFoundError:
                return {}
        try:
            entries = _retry(lambda: self.fs.ls(self._fspath(p), detail=True, refresh=True), f"list {p}")
        except FileNotFoundError:
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0) for e in entries
                if e.get("type") == "file"}

    def read_many(self, rels: List[Sequence[str]]) -> Dict[str, Optional[bytes]]:
        """Read several small files (remote: concurrently); keyed by :meth:`path`."""
        out: Dict[str, Optional[bytes]] = {self.path(*r): None for r in rels}
        if self.local:
            for r in rels:
                out[self.path(*r)] = self.read_bytes(r)
            return out
        if not rels:
            return out
        by = {self._fspath(p): p for p in out}
        got = self.fs.cat(list(by), on_error="omit")
        for k, v in got.items():
            if k in by:
                out[by[k]] = v
        return out

    def remove(self, rel: Sequence[str]) -> None:
        p = self.path(*rel)
        try:
            if self.local:
                os.remove(p)
            else:
                self.fs.rm_file(self._fspath(p))
        except FileNotFoundError:
            pass

    def put_file(self, local_path: str, rel: Sequence[str]) -> None:
        """Move a finished local file to its final name: a rename (local) or an upload (the object appears only
        when the upload is complete)."""
        p = self.path(*rel)
        if self.local:
            os.replace(local_path, p)
            return
        try:
            _retry(lambda: self.fs.put_file(local_path, self._fspath(p)), f"upload {p}")
        except PermissionError as exc:
            raise self.refused(exc, f"cannot upload {p}") from None
