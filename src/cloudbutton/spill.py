"""Large call arguments and results travel through storage instead of the control channel.

A payload above the job's ``storage_threshold`` is written to an object under the job's data URL
and replaced by a short reference: ``MARK`` followed by the object's URL. Pickles start with
``0x80``, so a reference is never mistaken for one. The caller removes a job's objects once all
of its calls are settled, so a job leaves nothing behind.
"""

from __future__ import annotations

import os

MARK = b"cloudbutton-stored:"


def spill(data: bytes, url: str) -> bytes:
    """Write ``data`` to ``url``; return the reference that stands for it."""
    from .storage import filesystem, storage_errors  # imported when needed: fsspec slows workers' start-up

    with storage_errors(url, f"write {len(data)} bytes of call data to"):
        fs, path = filesystem(url)
        if fs.protocol[0] in ("file", "local"):
            _write_private(path, data)
        else:
            fs.pipe_file(path, data)
    return MARK + url.encode()


def _write_private(path: str, data: bytes) -> None:
    """Write a local file only its owner can read, in folders only its owner can open: pickles are
    code, which another user of the machine must not read nor replace."""
    missing, parent = [], os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile by another call of the job
            pass
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)


def is_reference(payload: bytes) -> bool:
    return payload[: len(MARK)] == MARK


def unspill(payload: bytes) -> bytes:
    """The bytes ``payload`` stands for: itself, or the object a reference names."""
    if not is_reference(payload):
        return payload
    from .storage import filesystem, storage_errors

    url = payload[len(MARK) :].decode()
    with storage_errors(url, "read call data from", missing="cannot read call data from"):
        fs, path = filesystem(url)
        return fs.cat_file(path)


def remove(url: str) -> None:
    """Remove everything under ``url`` (a job's or an executor's data); missing is fine."""
    if url.startswith("file://") and not os.path.lexists(url[len("file://") :]):
        return  # nothing there: no need to import fsspec, which is slow to import
    from .storage import filesystem, storage_errors

    with storage_errors(url, "remove"):
        fs, path = filesystem(url)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
