"""The run store's schema: its tables, indexes, version, and the migrations from each older version."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, created REAL, status TEXT, pid INTEGER, config TEXT,
    started REAL, finished REAL, seconds REAL, error TEXT, summary TEXT
);
CREATE TABLE IF NOT EXISTS users (
    user TEXT PRIMARY KEY, partition_id INTEGER, node_id TEXT, dataset TEXT,
    attributes TEXT, n_train INTEGER, n_holdout INTEGER, defenses TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, started REAL, seconds REAL, n_clients INTEGER,
    train_loss REAL, accuracy REAL, metrics TEXT
);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER, user TEXT, node_id TEXT,
    num_examples INTEGER, local_steps INTEGER, lr REAL, loss REAL, protocol TEXT,
    update_norm REAL, layer_norms TEXT, defenses TEXT, metrics TEXT, epsilon REAL
);
CREATE TABLE IF NOT EXISTS attacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER, user TEXT, aggregate_size INTEGER,
    method TEXT, status TEXT, created REAL, started REAL, finished REAL, seconds REAL,
    metrics TEXT, image TEXT, error TEXT, defenses TEXT
);
CREATE TABLE IF NOT EXISTS workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL, pid INTEGER, node_id TEXT, node_ip TEXT, device TEXT
);
"""

# For the queries the CLI and the web view make: a user's or a round's updates and attacks, attacks by status.
INDEXES = """
CREATE INDEX IF NOT EXISTS updates_round ON updates (round);
CREATE INDEX IF NOT EXISTS updates_user ON updates (user, round);
CREATE INDEX IF NOT EXISTS attacks_round ON attacks (round);
CREATE INDEX IF NOT EXISTS attacks_user ON attacks (user, round);
CREATE INDEX IF NOT EXISTS attacks_status ON attacks (status);
"""


def _to_v2(db: sqlite3.Connection) -> None:
    """v1 -> v2: ``updates.epsilon`` (an update's DP-SGD epsilon, until then only inside its metrics JSON), filled
    from the metrics of the updates already there; and the indexes."""
    if "epsilon" not in {r[1] for r in db.execute("PRAGMA table_info(updates)")}:
        db.execute("ALTER TABLE updates ADD COLUMN epsilon REAL")
    rows = db.execute("SELECT id, metrics FROM updates WHERE metrics LIKE '%\"dp-epsilon\"%'").fetchall()
    for uid, metrics in rows:
        eps = json.loads(metrics).get("dp-epsilon")
        db.execute("UPDATE updates SET epsilon=? WHERE id=?", (None if eps is None else float(eps), uid))
    db.executescript(INDEXES)


# The store's schema version (SQLite ``user_version``; 0 reads as 1: the stores written before it was kept), and
# how a store of each older version is brought up to the next when a writer opens it.
SCHEMA_VERSION = 2
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _to_v2}
