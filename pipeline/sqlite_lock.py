"""One process at a time where a SQLite database is set up.

Opening a new SQLite store creates its tables (MLflow's and Optuna's alike), and a new study is
created and then seeded; two workers starting together on one file would race ("table already
exists", a study loaded before its settings are written). A file lock beside the database
(`mlflow.db.lock`) makes them take turns; where its folder does not exist yet, the lock lives in
the temporary folder, keyed by the database's path. Servers need none: their
databases handle concurrent setup themselves, and other URLs pass straight through.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def sqlite_setup_lock(url: str) -> Iterator[None]:
    if not url.startswith("sqlite:///"):
        yield
        return
    database = Path(url.removeprefix("sqlite:///")).resolve()
    if database.parent.is_dir():
        lock = database.with_name(database.name + ".lock")
    else:
        lock = Path(tempfile.gettempdir()) / f"cxr-transfer-{hashlib.sha256(str(database).encode()).hexdigest()[:16]}.lock"
    with FileLock(lock):
        yield
