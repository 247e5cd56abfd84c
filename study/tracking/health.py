"""Is the embedded MLflow store usable? Checked with the standard library's sqlite3, read-only, so that looking
never creates or migrates a database (opening a missing sqlite store through MLflow creates an empty one, which
would hide that the real one was lost)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

#: Tables every MLflow sqlite store has.
REQUIRED_TABLES = ("experiments", "runs", "metrics", "params", "tags", "alembic_version")


def sqlite_problem(path: Path) -> str | None:
    """What is wrong with the sqlite store at ``path`` (missing, empty, not a database, incomplete, read-only), or
    None if it looks usable."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = connection.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        return f"not a readable sqlite database ({error})"
    if not check or check[0] != "ok":
        return f"damaged (sqlite quick_check: {check[0] if check else 'no answer'})"
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        return f"not an MLflow store (no table {', '.join(missing)})"
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return "read-only"
    return None


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)


def experiment_id(path: Path, name: str) -> str | None:
    """The id of experiment ``name`` in the sqlite store at ``path`` (read-only; None if it has none)."""
    if sqlite_problem(path) not in (None, "read-only"):
        return None
    connection = _read_only(path)
    try:
        row = connection.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = "
                                 "'active'", (name,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        connection.close()
    return None if row is None else str(row[0])


def run_statuses(path: Path, name: str, kind: str) -> dict[str, int] | None:
    """How many runs of ``kind`` (the ``kind`` tag) experiment ``name`` has in each status, read-only from the
    sqlite store at ``path``; None if the store is unusable or lacks the experiment."""
    ident = experiment_id(path, name)
    if ident is None:
        return None
    connection = _read_only(path)
    try:
        rows = connection.execute(
            "SELECT r.status, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.experiment_id = ? "
            "AND r.lifecycle_stage = 'active' AND t.key = 'kind' AND t.value = ? GROUP BY r.status",
            (int(ident), kind)).fetchall()
    except sqlite3.DatabaseError:
        return None
    finally:
        connection.close()
    return {str(status): int(count) for status, count in rows}
