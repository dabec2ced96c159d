"""A model hub's local cache, written by the tests in huggingface_hub's own layout (nothing is downloaded).

huggingface_hub keeps a repository's files as content-addressed blobs with a snapshot folder per commit that
links to them, and ``refs/main`` naming the commit:

    <cache>/models--<org>--<name>/blobs/<sha256 of the file>
    <cache>/models--<org>--<name>/snapshots/<commit>/<filename> -> ../../blobs/<sha256>
    <cache>/models--<org>--<name>/refs/main                       (the commit)

:func:`add_to_hub_cache` writes files that way (the folder name from huggingface_hub's ``repo_folder_name``) and
checks with huggingface_hub's ``scan_cache_dir`` and ``try_to_load_from_cache`` that the library reads them back
as cached files of that repository, so an offline ``hf_hub_download`` (what open_clip and timm call) finds them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict

from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name


def add_to_hub_cache(cache: Path, repo_id: str, files: Dict[str, bytes], commit: str = "0" * 39 + "1") -> Dict[str, str]:
    """Write ``files`` (name -> bytes) as cached files of model repository ``repo_id`` under ``cache``; returns
    name -> the snapshot path huggingface_hub resolves it to."""
    repo_dir = Path(cache) / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    out = {}
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = repo_dir / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        assert found == str(link), (found, link)
        out[name] = str(link)
    info = scan_cache_dir(str(cache))
    repos = {r.repo_id: r for r in info.repos}
    assert not info.warnings, info.warnings
    assert repo_id in repos and {f.file_name for r in repos[repo_id].revisions for f in r.files} >= set(files)
    return out


def safetensors_bytes(state_dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in state_dict.items()}, metadata={"format": "pt"})
