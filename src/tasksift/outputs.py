"""One run's output folder written as one unit.

Every file of a run (the subset, ``dataset_info.json``, a report, ...) is written into a
hidden staging folder inside the output folder (``.tasksift-staging-*``, so renames never
cross a file system); a failure while writing (a full disk, Ctrl-C) removes it and leaves the
previous result untouched. :meth:`OutputUnit.commit` then swaps the staged files in by
renames only: the old ``manifest.json`` is moved aside first, the new one is renamed in last,
so ``manifest.json`` always describes the files beside it (``output.files``: name, role,
bytes); a folder without it holds no complete result. Outputs of the previous tasksift run
that this run does not write again (``selected.csv`` after a rerun with ``--format jsonl``)
are removed, but only names the previous manifest lists as its own, and only while their
size is still the one recorded (a file edited since is kept: :meth:`OutputUnit.kept_outputs`);
files tasksift did not write are never touched. A failing swap is rolled back; a process killed during the
swap leaves no manifest and a journal that the next run uses to clean up.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import DataError

MANIFEST = "manifest.json"
STAGING_PREFIX = ".tasksift-staging-"
_JOURNAL = "commit.json"
_ASIDE = ".previous"


@dataclass
class OutputFile:
    """One file (or folder) a run writes into the output folder."""

    name: str
    role: str
    info: dict[str, Any] = field(default_factory=dict)


def _size(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _bare(name: Any) -> bool:
    """A plain name inside the folder (no path parts, not hidden, not the manifest)."""
    return (isinstance(name, str) and name and name == Path(name).name and not name.startswith(".")
            and name != MANIFEST)


def previous_outputs(out_dir: str | os.PathLike) -> dict[str, int | None]:
    """Names the tasksift manifest in ``out_dir`` lists as its run's files -> their recorded
    size (None when the manifest predates sizes: then only its ``selected.*`` subset counts)."""
    try:
        man = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return _listed(man)


def _listed(man: Any) -> dict[str, int | None]:
    if not isinstance(man, dict) or "tasksift_manifest" not in man or not isinstance(man.get("output"), dict):
        return {}
    output = man["output"]
    out: dict[str, int | None] = {}
    for f in output.get("files") or []:
        if isinstance(f, dict) and _bare(f.get("name")):
            size = f.get("bytes")
            out[f["name"]] = size if isinstance(size, int) else None
    if not out and isinstance(output.get("path"), str):   # a manifest from before output.files
        name = Path(output["path"]).name
        if _bare(name) and (name == "selected" or name.startswith("selected.")):
            out[name] = None
    return out


class OutputUnit:
    """Stage a run's files, then swap them into ``out_dir`` together.

    Use as a context manager: ``with OutputUnit(out) as unit: write into unit.path(name),
    unit.add(name, role); unit.commit(manifest)``. Leaving the block without commit (an
    exception) removes the staged files; the folder keeps what it held. Saves into one folder
    take turns (a lock on the folder).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out = Path(out_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.out)
            self._clear_leftovers()
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        except OSError as e:
            if getattr(self, "_lock_fd", None) is not None:
                os.close(self._lock_fd)
            raise DataError(f"output folder is not writable ({e.strerror or e})", file=str(self.out)) from None
        self.files: list[OutputFile] = []
        self._committed = False
        self._planned: tuple[dict[str, int | None], list[Path]] | None = None

    # -- writing --------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where to write the output ``name`` (a staged path; it lands at ``out/name``)."""
        return self.staging / name

    def add(self, name: str, role: str, **info: Any) -> OutputFile:
        """Record that ``name`` was written into :attr:`staging` (``info`` is for the caller)."""
        if not _bare(name):
            raise ValueError(f"output name must be a plain file name, got {name!r}")
        if not (self.staging / name).exists():
            raise FileNotFoundError(f"output {name} was not written into the staging folder")
        if any(f.name == name for f in self.files):
            raise ValueError(f"two outputs named {name}")
        f = OutputFile(name, role, dict(info))
        self.files.append(f)
        return f

    def file(self, role: str) -> OutputFile | None:
        """The first output of ``role`` added so far."""
        return next((f for f in self.files if f.role == role), None)

    def final(self, name: str) -> Path:
        """Where ``name`` lives once committed."""
        return self.out / name

    def listing(self) -> list[dict[str, Any]]:
        """``output.files`` of the manifest: name, role, bytes of each staged output."""
        return [{"name": f.name, "role": f.role, "bytes": _size(self.staging / f.name)} for f in self.files]

    # -- swapping in ----------------------------------------------------------------------
    def kept_outputs(self) -> list[Path]:
        """Outputs of the previous run that this one would remove but keeps: changed since
        tasksift wrote them (a different size). Call once every output is added."""
        return self._plan()[1]

    def _plan(self) -> tuple[dict[str, int | None], list[Path]]:
        """(stale outputs to remove, edited ones to keep) of the previous run."""
        if self._planned is None:
            new = {f.name for f in self.files}
            previous = {**self._journal_names(), **previous_outputs(self.out)}
            stale, kept = {}, []
            for name, size in sorted(previous.items()):
                path = self.out / name
                if name in new or (not path.exists() and not path.is_symlink()):
                    continue
                if size is not None and (path.is_symlink() or _size(path) != size):
                    kept.append(path)
                else:
                    stale[name] = size
            self._planned = (stale, kept)
        return self._planned

    def commit(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest`` (with ``output.files`` filled in) and swap every output in."""
        manifest.setdefault("output", {})["files"] = self.listing()
        write_json(self.staging / MANIFEST, manifest)
        stale, _ = self._plan()
        write_json(self.staging / _JOURNAL, {"outputs": sorted({f.name for f in self.files} | set(stale))})
        aside = self.staging / _ASIDE
        aside.mkdir()
        done: list[tuple[Path, Path]] = []   # renames made, undone in reverse on failure

        def move(src: Path, dst: Path) -> None:
            os.replace(src, dst)
            done.append((src, dst))

        try:
            if (self.out / MANIFEST).exists():
                move(self.out / MANIFEST, aside / MANIFEST)
            for f in self.files:
                target, staged = self.out / f.name, self.staging / f.name
                if target.is_dir() or (staged.is_dir() and (target.exists() or target.is_symlink())):
                    move(target, aside / f.name)   # a rename cannot replace a folder
                move(staged, target)
            for name in stale:                     # set aside: removed with the staging folder
                move(self.out / name, aside / name)
            move(self.staging / MANIFEST, self.out / MANIFEST)
        except BaseException:
            for src, dst in reversed(done):
                with contextlib.suppress(OSError):
                    os.replace(dst, src)
            raise
        self._committed = True
        _fsync_dir(self.out)
        self._remove_staging()

    def _journal_names(self) -> dict[str, int | None]:
        """Output names recorded by swaps that were killed midway (their staging folders)."""
        names: dict[str, int | None] = {}
        for folder in self.out.glob(STAGING_PREFIX + "*"):
            if folder == getattr(self, "staging", None):
                continue
            with contextlib.suppress(OSError, ValueError, TypeError):
                listed = json.loads((folder / _JOURNAL).read_text(encoding="utf-8"))["outputs"]
                names.update({n: None for n in listed if _bare(n) and (self.out / n).is_file()})
        return names

    def _clear_leftovers(self) -> None:
        """Staging folders of runs that died while writing (nothing of theirs was swapped in)."""
        for folder in self.out.glob(STAGING_PREFIX + "*"):
            if not (folder / _JOURNAL).exists():
                shutil.rmtree(folder, ignore_errors=True)

    def _remove_staging(self) -> None:
        for folder in self.out.glob(STAGING_PREFIX + "*"):   # ours, and journals now superseded
            shutil.rmtree(folder, ignore_errors=True)

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "OutputUnit":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            os.close(self._lock_fd)
        if isinstance(exc, OSError) and exc.filename and str(exc.filename).startswith(str(self.staging)):
            # name the file as the user knows it, not its staged path
            part = Path(str(exc.filename)).relative_to(self.staging).parts[:1] or (MANIFEST,)
            raise OSError(exc.errno, exc.strerror, str(self.out / _output_name(part[0]))) from None


def _output_name(staged: str) -> str:
    """The output a staged file becomes: ``.selected.jsonl.k3j_x9ab.tmp`` -> ``selected.jsonl``."""
    m = re.match(r"^\.(.+?)(\.[A-Za-z0-9_]{8})?\.tmp", staged)
    return m.group(1) if m else staged


def _lock(folder: Path) -> int:
    """An exclusive lock on ``folder`` (held until the fd is closed); file systems without
    locks just go unlocked."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            os.close(fd)
            raise
    return fd

