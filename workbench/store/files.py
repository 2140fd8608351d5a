"""Files a store is made of, written so that a crash never leaves a half-written one in place.

Every file is written under a temporary name in the same folder, flushed and ``fsync``-ed, then renamed
over its final name (atomic on POSIX), and the folder is ``fsync``-ed so the rename itself survives a
power cut. A reader therefore sees either the old file or the new one, never a mix; temporary files
(``.tmp-*``) are never read and are cleaned up by the next writer.

One writer at a time: :class:`StoreLock` holds ``DIR/.lock`` (created exclusively, already holding the
writer's pid and host). A second writer refuses with a message naming the first; a lock left by a
process that died (same host, pid gone) is taken over.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from workbench.store.files import atomic_write_json, StoreLock
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = atomic_write_json(d / "a.json", {"x": 1})
    >>> json.loads((d / "a.json").read_text())
    {'x': 1}
    >>> with StoreLock(d):
    ...     (d / ".lock").exists()
    True
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"


class StoreBusyError(RuntimeError):
    """Another process is writing the same store."""


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; on success it is fsync-ed and renamed to ``final``.

    On an exception the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}-{final.name}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def atomic_write_bytes(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_json(final: Path, obj) -> Path:
    """Write ``obj`` as JSON (UTF-8, indented) to ``final`` atomically."""
    return atomic_write_bytes(final, json.dumps(obj, ensure_ascii=False, indent=1, default=str).encode())


def remove_temporaries(folder: Path) -> int:
    """Delete the ``.tmp-*`` files a killed writer left in ``folder``; returns how many."""
    removed = 0
    for p in Path(folder).glob(TMP_PREFIX + "*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Exclusive writer lock on a store folder (see the module docstring).

    Args:
        folder: the store folder (created if missing).
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _create(self, data: bytes) -> None:
        """Create the lock file holding ``data``, or raise ``FileExistsError``.

        The owner is written to a temporary file first and hard-linked to the lock's name (atomic,
        failing if it exists), so the lock never exists empty: a writer killed at any point leaves
        either no lock or one naming it. Where hard links are not supported, the lock is created
        exclusively and then written.
        """
        tmp = self.folder / f"{TMP_PREFIX}{os.getpid()}-{LOCK_FILE}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                raise
            except OSError:  # no hard links here (or the temporary was removed): create it in place
                fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.folder)

    def acquire(self) -> "StoreLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                self._create(json.dumps(me).encode())
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                if host == me["host"] and isinstance(pid, int) and pid != me["pid"] and not _alive(pid):
                    warnings.warn(f"{self.folder}: taking over the lock of process {pid}, which is no longer "
                                  "running (its recording was interrupted; resuming it)", stacklevel=3)
                    self.path.unlink(missing_ok=True)
                    continue
                raise StoreBusyError(
                    f"{self.folder} is being written by another process (pid {pid} on {host}, since "
                    f"{owner.get('since', '?')}); wait for it to finish or choose another folder. If no "
                    f"process is writing it, delete {self.path}") from None
            self.held = True
            return self
        raise StoreBusyError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
