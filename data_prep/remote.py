"""One opener for every place a prepared dataset can live: local paths, HTTP(S), pipes, object stores.

A dataset *location* is a prefix; the location of a file in it (``manifest.json``, a shard named
by the manifest) is the prefix, ``/``, then the file name:

* a local directory: ``/data/ds`` -> ``/data/ds/train-000000.tar`` (plain ``open``; a stat gives
  the size, so a truncated local shard is refused at start-up);
* ``file://PATH``: the local directory PATH, read exactly like it (``file:///data/ds`` ->
  ``file:///data/ds/train-000000.tar``, opened as ``/data/ds/train-000000.tar``), kept a string
  like every URL (a ``Path`` would collapse its ``//``);
* ``http://`` / ``https://``: ``https://host/ds`` -> ``https://host/ds/train-000000.tar``
  (``urllib``; an HTTP error or a timeout names the URL);
* ``pipe:COMMAND`` (webdataset's convention): the command's stdout is the file. When COMMAND
  holds ``{name}``, the file name replaces it (``pipe:aws s3 cp s3://bucket/ds/{name} -``);
  otherwise ``/`` and the name are appended (``pipe:cat /data/ds`` -> ``cat /data/ds/manifest.json``).
  The command runs through ``sh -c``; a non-zero exit names the command and its last stderr line;
* ``s3://``, ``gs://`` (any other ``scheme://``): through fsspec, when it is installed (with
  s3fs / gcsfs for those schemes); without it, a one-line error says what to install.

File names are those the manifest lists and must be plain names (letters, digits, ``._-``), so
they are safe to put in a URL or a shell command.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

HTTP_TIMEOUT_S = float(os.environ.get("MEGABYTE_HTTP_TIMEOUT", "60"))
STREAM_BUFFER = 1 << 20
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Location = Union[str, Path]


class RemoteError(OSError):
    """A file that cannot be opened or read through its location (the message names it)."""


def is_remote(location: Location) -> bool:
    """Whether ``location`` is a URL (``file://`` included) or a ``pipe:`` command rather than a
    plain local path: such a location stays a string (never a ``Path``, which would collapse the
    ``//`` of a URL) and its files are named by :func:`join`. A ``file://`` location is still
    opened and sized like a local path (:func:`open_stream`, :func:`size_of`)."""
    s = str(location)
    return s.startswith("pipe:") or bool(_SCHEME_RE.match(s))


def _is_local(location: Location) -> bool:
    """Whether ``location`` names a local file: a plain path or a ``file://`` URL."""
    s = str(location)
    return s.startswith("file://") or not is_remote(s)


def _local(location: Location) -> str:
    s = str(location)
    return s[len("file://"):] if s.startswith("file://") else s


def join(base: Location, name: str) -> str:
    """The location of the file ``name`` in the dataset at ``base`` (see the module docstring)."""
    if not NAME_RE.match(name):
        raise RemoteError(f"{base}: file name {name!r} is not a plain file name (letters, digits, ._-)")
    s = str(base)
    if not is_remote(s):
        return str(Path(s) / name)
    if s.startswith("file://"):
        return "file://" + str(Path(_local(s)) / name)
    if s.startswith("pipe:") and "{name}" in s:
        return s.replace("{name}", name)
    return s.rstrip("/") + "/" + name


def open_stream(location: Location) -> BinaryIO:
    """A readable binary file object for ``location`` (close it when done).

    Errors (missing file, HTTP status, connection failure, timeout, failing command, missing
    fsspec) raise :class:`RemoteError` with one line naming the location; a local file that does
    not exist raises :class:`FileNotFoundError` as ``open`` does.
    """
    s = str(location)
    if _is_local(s):
        return open(_local(s), "rb")
    # Buffered, so read(n) gives n bytes unless the file ends (tarfile expects whole blocks).
    if s.startswith("pipe:"):
        return io.BufferedReader(_PipeStream(s), STREAM_BUFFER)  # type: ignore[return-value]
    if s.startswith(("http://", "https://")):
        return io.BufferedReader(_HttpStream(s), STREAM_BUFFER)  # type: ignore[return-value]
    return _fsspec_open(s)


def size_of(location: Location) -> Optional[int]:
    """The size in bytes of a local file, ``file://`` included (None for a remote location:
    asking would cost one request per shard; a remote shard's size is checked as it is read).
    Raises :class:`FileNotFoundError` for a missing local file."""
    if not _is_local(location):
        return None
    return os.stat(_local(location)).st_size


def read_bytes(location: Location) -> bytes:
    """The whole file at ``location`` (for small files such as manifests)."""
    with open_stream(location) as f:
        return f.read()


class _HttpStream(io.RawIOBase):
    """A GET response as a file; errors name the URL and say how much of the body arrived, and
    a body shorter than its Content-Length is an error, not a silent end of file."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.received = url, 0
        try:
            self.resp: Any = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            raise RemoteError(f"{url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise RemoteError(f"{url}: cannot connect: {err.reason}") from None
        except TimeoutError:
            raise RemoteError(f"{url}: timed out after {HTTP_TIMEOUT_S:g} s waiting for an answer") from None
        length = self.resp.headers.get("Content-Length", "")
        self.length: Optional[int] = int(length) if length.isdigit() else None

    def readable(self) -> bool:
        return True

    def _progress(self) -> str:
        """How much of the body arrived, for error messages: "10000 of 1382400 bytes received"."""
        return f"{self.received}{'' if self.length is None else f' of {self.length}'} bytes received"

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        # read1: one read of the socket, so what arrived is counted even if the next read fails.
        try:
            data = self.resp.read1(len(b))
        except TimeoutError:
            raise RemoteError(f"{self.url}: read timed out after {HTTP_TIMEOUT_S:g} s "
                              f"({self._progress()})") from None
        except Exception as err:  # IncompleteRead, connection reset, ...
            raise RemoteError(f"{self.url}: connection broke while reading ({self._progress()}): "
                              f"{type(err).__name__}: {err}") from None
        n = len(data)
        b[:n] = data
        self.received += n
        if not n and len(b) and self.length is not None and self.received < self.length:
            raise RemoteError(f"{self.url}: connection closed early ({self._progress()})")
        return n

    def close(self) -> None:
        if not self.closed:
            self.resp.close()
        super().close()


class _PipeStream(io.RawIOBase):
    """The stdout of ``sh -c COMMAND`` as a file. At end of file the exit status is checked, so a
    failing command is an error naming it; closing early stops the command (no error)."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location, self.command = location, location[len("pipe:"):].strip()
        if not self.command:
            raise RemoteError(f"{location}: empty pipe: command")
        self._stderr = tempfile.TemporaryFile()  # a file, not a PIPE: a chatty command cannot block
        self.proc = subprocess.Popen(["sh", "-c", self.command], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._stderr)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        assert self.proc.stdout is not None
        n = self.proc.stdout.readinto(b)
        if n == 0:
            self._check_exit()
        return n

    def _check_exit(self) -> None:
        code = self.proc.wait()
        if code != 0:
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            last = f": {lines[-1].strip()}" if lines else ""
            raise RemoteError(f"{self.location}: command exited with status {code}{last}")

    def close(self) -> None:
        if not self.closed:
            if self.proc.poll() is None:
                self.proc.kill()  # closed before the end: the rest is not wanted
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc.wait()
            self._stderr.close()
        super().close()


def _fsspec_open(url: str) -> BinaryIO:
    scheme = url.split("://", 1)[0]
    hint = f"pip install fsspec{ {'s3': ' s3fs', 'gs': ' gcsfs', 'gcs': ' gcsfs'}.get(scheme, '')}"
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except ImportError as err:  # fsspec itself, or its backend for this scheme (s3fs, gcsfs)
        raise RemoteError(f"{url}: reading {scheme}:// needs fsspec and its {scheme} backend: {hint} "
                          f"({err})") from None
    except FileNotFoundError:
        raise RemoteError(f"{url}: not found") from None
    except Exception as err:
        raise RemoteError(f"{url}: cannot open: {type(err).__name__}: {err}") from None
