"""Where USPTO grant files are: folders, a zip per patent, weekly bulk archives (a tar or zip of per-patent zips).

Accepted inputs (any mix, each ``--input``):

* a **folder tree** holding grant XML files (``*.XML``/``*.xml``) with their drawing sheets (``*.TIF``) in the same
  folder, one folder per patent as the USPTO unpacks them (``USD0907292-20210105/USD0907292-20210105.XML`` +
  ``...-D00001.TIF``), and/or per-patent zips and bulk archives anywhere in it;
* a **per-patent zip** (``USD0907292-20210105.ZIP``: the XML and TIFs, at the top or in one folder);
* a **weekly bulk archive**: the "Patent Grant Full Text Data with Embedded TIFF Images" releases
  (``I20210105.tar``, also seen as a zip) hold one zip per patent at any depth (``I20210105/DESIGN/USD...ZIP``,
  ``UTIL0907/US10884234-20210105.ZIP``); a tar of unpacked patent folders is read too. Compressed tars
  (``.tar.gz``) cannot be read member by member: unpack the outer layer first (an error says so).

Nothing is extracted to disk: a member is addressed by a :class:`Member` -- a file plus the steps into the
archives around it (a tar member by byte offset and size, a zip member by name) -- and read on demand, in the
shard workers too. Zips inside a tar are read through a window on the tar file (only the zip's directory and
the members needed are read).

Kinds: files whose names say they are not design grants (``US10884234`` utility, ``USPP``, ``USRE``, ``USH``) are
counted by kind and never opened; every grant XML read is checked for kind ``S`` (design) by the importer.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["Member", "GrantFiles", "walk_inputs", "read_member", "kind_from_name"]

Step = Tuple  # ("tar", offset, size) | ("zip", name)


@dataclass(frozen=True)
class Member:
    """A file, possibly inside archives: ``path`` on disk (relative to the importer's root, or absolute) and the
    ``steps`` into the archives around the member, outermost first."""

    path: str
    steps: Tuple[Step, ...] = ()

    def describe(self) -> str:
        """``I20210105.tar!DESIGN/USD0907292-20210105.ZIP!USD0907292-20210105.XML`` style."""
        parts = [self.path]
        for st in self.steps:
            parts.append(st[3] if st[0] == "tar" and len(st) > 3 else (st[1] if st[0] == "zip" else f"@{st[1]}"))
        return "!".join(parts)

    def to_list(self) -> list:
        return [self.path, [list(s) for s in self.steps]]

    @classmethod
    def from_list(cls, v) -> "Member":
        return cls(v[0], tuple(tuple(s) for s in v[1]))


@dataclass
class GrantFiles:
    """One grant's XML and the files next to it (by file name, upper-cased)."""

    xml: Member
    files: Dict[str, Member]
    container: str  # for messages: the folder or archive chain holding the patent

    def sheet(self, name: str) -> Optional[Member]:
        return self.files.get(os.path.basename(name).upper())


@dataclass
class WalkStats:
    skipped_by_kind: Counter = field(default_factory=Counter)  # kind -> files not opened
    archives: int = 0
    problems: List[Tuple[str, str]] = field(default_factory=list)  # (where, message)


_NON_DESIGN = ((re.compile(r"^USPP\d", re.I), "plant"), (re.compile(r"^USRE\d", re.I), "reissue"),
               (re.compile(r"^USH\d", re.I), "statutory invention registration"),
               (re.compile(r"^US\d", re.I), "utility"), (re.compile(r"^USD\d", re.I), "design"))


def kind_from_name(name: str) -> Optional[str]:
    """The grant kind a USPTO file name says (``USD0907292-20210105.ZIP`` -> ``design``), None if it says none."""
    base = os.path.basename(name.rstrip("/"))
    for rx, kind in _NON_DESIGN:
        if rx.match(base):
            return kind
    return None


class _Window(io.RawIOBase):
    """A read-only, seekable window ``[offset, offset + size)`` on a seekable file."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, pos, whence=0):
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + pos))
        return self.pos

    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _is_xml(name: str) -> bool:
    return name.lower().endswith(".xml")


def _is_zip(name: str) -> bool:
    return name.lower().endswith(".zip")


def _is_tar(name: str) -> bool:
    return name.lower().endswith(".tar")


def _group_by_folder(names: List[str]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for n in names:
        out.setdefault(posix_dirname(n), []).append(n)
    return out


def posix_dirname(n: str) -> str:
    return n.rsplit("/", 1)[0] if "/" in n else ""


def _zip_patents(zf: zipfile.ZipFile, base: Member, where: str, stats: WalkStats,
                 depth: int) -> Iterator[GrantFiles]:
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    for folder, group in _group_by_folder(names).items():
        files = {os.path.basename(n).upper(): Member(base.path, base.steps + (("zip", n),)) for n in group}
        for n in group:
            if _is_xml(n):
                k = kind_from_name(n)
                if k and k != "design":
                    stats.skipped_by_kind[k] += 1
                    continue
                yield GrantFiles(Member(base.path, base.steps + (("zip", n),)), files,
                                 f"{where}!{folder}" if folder else where)
    for n in names:
        if _is_zip(n):
            k = kind_from_name(n)
            if k and k != "design":
                stats.skipped_by_kind[k] += 1
                continue
            inner = Member(base.path, base.steps + (("zip", n),))
            try:
                with zipfile.ZipFile(io.BytesIO(zf.read(n))) as z2:
                    yield from _zip_patents(z2, inner, f"{where}!{n}", stats, depth + 1)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                stats.problems.append((f"{where}!{n}", f"not a readable zip ({exc}); skipped"))


def _tar_patents(path: str, shown: str, stats: WalkStats) -> Iterator[GrantFiles]:
    try:
        tf = tarfile.open(path, mode="r:")  # plain tar only: members are read by offset
    except tarfile.ReadError as exc:
        raise ValueError(f"{shown}: not a plain (uncompressed) tar archive ({exc}); the USPTO's weekly "
                         ".tar files are plain -- unpack a compressed one (gunzip) first") from None
    with tf, open(path, "rb") as raw:
        loose: List[tarfile.TarInfo] = []
        for ti in tf:
            if not ti.isfile():
                continue
            if _is_zip(ti.name):
                k = kind_from_name(ti.name)
                if k and k != "design":
                    stats.skipped_by_kind[k] += 1
                    continue
                base = Member(shown, (("tar", ti.offset_data, ti.size, ti.name),))
                try:
                    with zipfile.ZipFile(_Window(raw, ti.offset_data, ti.size)) as zf:
                        yield from _zip_patents(zf, base, f"{shown}!{ti.name}", stats, 1)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    stats.problems.append((f"{shown}!{ti.name}", f"not a readable zip ({exc}); skipped"))
            elif _is_xml(ti.name) or ti.name.lower().endswith((".tif", ".tiff")):
                loose.append(ti)
        by_folder: Dict[str, List[tarfile.TarInfo]] = {}
        for ti in loose:
            by_folder.setdefault(posix_dirname(ti.name), []).append(ti)
        for folder, group in by_folder.items():
            files = {os.path.basename(t.name).upper(): Member(shown, (("tar", t.offset_data, t.size, t.name),))
                     for t in group}
            for t in group:
                if _is_xml(t.name):
                    k = kind_from_name(t.name)
                    if k and k != "design":
                        stats.skipped_by_kind[k] += 1
                        continue
                    yield GrantFiles(files[os.path.basename(t.name).upper()], files, f"{shown}!{folder}")


def _file_patents(path: Path, shown: str, stats: WalkStats) -> Iterator[GrantFiles]:
    name = path.name
    if _is_tar(name):
        stats.archives += 1
        yield from _tar_patents(str(path), shown, stats)
    elif _is_zip(name):
        k = kind_from_name(name)
        if k and k != "design":
            stats.skipped_by_kind[k] += 1
            return
        stats.archives += 1
        try:
            with zipfile.ZipFile(path) as zf:
                yield from _zip_patents(zf, Member(shown), shown, stats, 0)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            stats.problems.append((shown, f"not a readable zip ({exc}); skipped"))
    elif name.lower().endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        raise ValueError(f"{shown}: a compressed tar cannot be read member by member; unpack the outer layer "
                         "first (e.g. gunzip) and give the .tar")


def walk_inputs(paths: List[str], root: Path) -> Tuple[List[GrantFiles], WalkStats]:
    """Every grant found under ``paths`` (files or folders), in a stable order (sorted names), with the counts of
    what was skipped unopened. Member paths are relative to ``root`` when they are under it."""
    stats = WalkStats()
    found: List[GrantFiles] = []

    def shown(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(p.resolve())

    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_file():
            if _is_xml(p.name):
                files = {f.name.upper(): Member(shown(f)) for f in p.parent.iterdir() if f.is_file()}
                found.append(GrantFiles(Member(shown(p)), files, shown(p.parent)))
            elif _is_zip(p.name) or _is_tar(p.name) or p.name.lower().endswith((".tar.gz", ".tgz", ".tar.bz2",
                                                                                     ".tar.xz")):
                found.extend(_file_patents(p, shown(p), stats))
            else:
                raise ValueError(f"{p}: not a grant XML, a zip or a tar (give a folder, a patent's .XML, a "
                                 "per-patent .zip or a weekly .tar)")
            continue
        for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
            dirnames.sort()
            filenames.sort()
            d = Path(dirpath)
            xmls = [f for f in filenames if _is_xml(f)]
            if xmls:
                files = {f.upper(): Member(shown(d / f)) for f in filenames}
                for x in xmls:
                    k = kind_from_name(x)
                    if k and k != "design":
                        stats.skipped_by_kind[k] += 1
                        continue
                    found.append(GrantFiles(files[x.upper()], files, shown(d)))
            for f in filenames:
                if _is_zip(f) or _is_tar(f) or f.lower().endswith((".tar.gz", ".tgz")):
                    found.extend(_file_patents(d / f, shown(d / f), stats))
    return found, stats


class _ContainerCache:
    """The last few archive layers read in this process (the sheets of one patent share their zip)."""

    def __init__(self, size: int = 4):
        self.size = size
        self.items: "OrderedDict[Tuple, bytes]" = OrderedDict()

    def get(self, key):
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key, value: bytes):
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


_CACHE = _ContainerCache()


def read_member(root: Path, m: Member) -> bytes:
    """The bytes of a member (module docstring). Raises ``OSError``/``KeyError``/``zipfile.BadZipFile``."""
    full = Path(m.path) if os.path.isabs(m.path) else Path(root) / m.path
    if not m.steps:
        return full.read_bytes()
    # the innermost zip's bytes are cached: the sheets of one patent are read one after the other
    data: Optional[bytes] = None
    start = 0
    for k in range(len(m.steps) - 1, 0, -1):
        hit = _CACHE.get((str(full), m.steps[:k]))
        if hit is not None:
            data, start = hit, k
            break
    with open(full, "rb") as f:
        for k in range(start, len(m.steps)):
            st = m.steps[k]
            last = k == len(m.steps) - 1
            if st[0] == "tar":
                if data is None:
                    f.seek(st[1])
                    data = f.read(st[2])
                else:
                    data = data[st[1]:st[1] + st[2]]
            elif st[0] == "zip":
                if data is None:
                    with zipfile.ZipFile(f) as zf:
                        data = zf.read(st[1])
                else:
                    with zipfile.ZipFile(io.BytesIO(data)) as zf:
                        data = zf.read(st[1])
            else:
                raise ValueError(f"unknown archive step {st!r}")
            if not last and _is_zip(st[-1] if st[0] == "tar" else st[1]):
                _CACHE.put((str(full), m.steps[:k + 1]), data)
    return data
