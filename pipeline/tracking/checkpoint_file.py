"""A checkpoint written in place, around the page cache where the file system allows it.

A fine-tuned ResNet50's checkpoint is 280 MB an epoch. Written through the page cache, each write
first makes the kernel find that many pages (on a VM, pages the host must first back), and those
pages can then push the decoded images out of the cache, to be read again from disk; the write's
CPU before and after is in benchmarks/RESULTS.md (the 2026-12-03 and 2026-12-06 speed sections). Written with O_DIRECT, the bytes go
from one reused, aligned buffer to the device, and the cache is left alone: the checkpoint is read
again only by a resume. Where the file system refuses O_DIRECT (tmpfs, some network mounts, an
OS without it), the file is written through the cache, as before.

The cost of the direct write is that it lasts as long as the device takes: training waits for it
only at its next optimizer step, so a disk slower than one batch makes training wait for it.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

O_DIRECT = getattr(os, "O_DIRECT", 0)
ALIGNMENT = 4096  # of offsets, lengths and memory in direct writes: the largest logical block in use
BUFFER_BYTES = 8 * 2**20


class DirectFile:
    """What `torch.save` writes to: its bytes gathered in an aligned buffer, written from it at
    each full buffer, the file cut to its length at `close()`."""

    def __init__(self, fd: int, buffer: mmap.mmap):
        self.fd, self.view = fd, memoryview(buffer)
        self.filled = self.offset = 0
        self.refused = False  # the file system took the file open but refused a direct write

    def write(self, data) -> int:
        # Copied holding the GIL, which pauses training's thread for the copy: where training's
        # operator threads fill the cores, a copy running beside them preempts one and stalls the
        # others at every operator, which cost benchmarks/speed.py's fine-tune runs more than the
        # pause did (a copy through numpy, which lets go of the GIL, was tried and measured).
        data = memoryview(data).cast("B")
        done = 0
        while done < len(data):
            take = min(len(self.view) - self.filled, len(data) - done)
            self.view[self.filled : self.filled + take] = data[done : done + take]
            self.filled, done = self.filled + take, done + take
            if self.filled == len(self.view):
                self._drain(self.filled)
        return len(data)

    def _drain(self, length: int) -> None:
        written = 0
        while written < length:
            try:
                written += os.pwrite(self.fd, self.view[written:length], self.offset + written)
            except OSError as e:
                # Said here: raised inside torch.save, it comes out as torch's own RuntimeError.
                self.refused = e.errno == errno.EINVAL
                raise
        self.offset += length
        self.filled = 0

    def flush(self) -> None:  # torch.save calls it; the last, partial block is written by close()
        pass

    def close(self) -> None:
        end = self.offset + self.filled
        if self.filled:
            self._drain(-(-self.filled // ALIGNMENT) * ALIGNMENT)  # the tail padded to a block, then cut off
        os.ftruncate(self.fd, end)


def write_checkpoint(checkpoint: dict, path: Path, buffer: mmap.mmap | None) -> None:
    """`checkpoint` saved at `path`, over what it held (its pages reused, not freed), directly
    from `buffer` (an anonymous map of `BUFFER_BYTES`, reused from write to write) where the file
    system takes it, else through the page cache."""
    import torch  # here, not above: importing the tracking helpers needs no torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # Without the per-record CRC-32, which costs 40 % of the write on a 300 MB checkpoint;
    # torch.load reads it as before, and publishing only a finished slot keeps it whole.
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        if buffer is not None and O_DIRECT and _write_direct(checkpoint, path, buffer):
            return
        with open(path, "r+b" if path.exists() else "wb") as f:
            torch.save(checkpoint, f)
            f.truncate()
    finally:
        torch.serialization.set_crc32_options(crc)


def _write_direct(checkpoint: dict, path: Path, buffer: mmap.mmap) -> bool:
    """False where this file system refuses direct writes (then the caller writes the whole file
    again, through the cache, and cuts it to length)."""
    import torch

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o644)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    file = DirectFile(fd, buffer)
    try:
        torch.save(checkpoint, file)
        file.close()
        return True
    except (OSError, RuntimeError):
        if file.refused:  # opened, but an aligned write refused
            return False
        raise
    finally:
        os.close(fd)


def new_buffer() -> mmap.mmap:
    """An anonymous map: page-aligned, as direct writes need their memory to be."""
    return mmap.mmap(-1, BUFFER_BYTES)
