"""What a client can see of a malicious server: the digest of the model it received in a public append-only log
(model inconsistency shows as two digests in one round), and parameters no honest model has (imprint layers).

The transparency log is a SQLite file every client of the run can open (in a simulation they share the machine's
filesystem; it stands for a public append-only log, e.g. a certificate-transparency-style log the server cannot
rewrite). One row per (run, round, user) — ``UNIQUE`` — holding the sha256 digest of the received arrays; rows are
only ever inserted (``INSERT OR IGNORE``: a retried round keeps its first digest). SQLite serialises concurrent
writers from the clients' processes itself (file locks; a 30 s busy timeout), so no extra locking is needed.

Detection depends on arrival order: a client compares its digest with those already logged, so the first client of
a round sees none. ``wait_s`` lets a client wait (up to that long) until every client of the round has logged —
only useful where the round's clients run concurrently (simulation.client_cpus small enough), else it only waits.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_sim.core.defenses.base import DEFENSES, Defense, Received, Record, RunView, Verdict
from fl_sim.core.errors import ConfigError
from fl_sim.core.fields import _f

LOG_NAME = "transparency.sqlite"  # the log's file in the run folder (``log`` empty)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS digests (run TEXT NOT NULL, round INTEGER NOT NULL, user TEXT NOT NULL, "
           "digest TEXT NOT NULL, time REAL NOT NULL, UNIQUE (run, round, user))")
_POLL_S = 0.05
SAME_ROWS_RTOL = 1e-6  # rows this close (relative to their norm) count as identical


@dataclass
class ModelCheckConfig:
    """Each client logs the digest of the model it received and checks it against the round's other digests and
    for imprint-like layers; flags (or refuses to train on) a model that fails."""

    enabled: bool = _f(False, "check every received model (digest in the transparency log, parameter statistics)")
    action: str = _f("flag", "flag: report the finding in the reply and train as usual | refuse: report it and send "
                             "back the received model unchanged (no update)", choices=("flag", "refuse"))
    log: str = _f("", f"the transparency log (a SQLite file every client can read; empty: {LOG_NAME} in the run "
                      "folder)")
    imprint_check: bool = _f(True, "flag a weight matrix whose rows are all the same non-zero vector, or a tensor "
                                   "the client's model does not have (an imprint/trap layer)")
    wait_s: float = _f(0.0, "seconds a client waits for every client of the round to log its digest before it "
                            "compares (0: compare with what is logged already: the first client sees nothing)",
                       min=0.0)


def _canonical(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Floats as little-endian float64, everything else as little-endian int64: lossless, the same bytes for the
    same values whatever dtype or byte order they travelled in."""
    a = np.asarray(a)
    kind = "<f8" if np.issubdtype(a.dtype, np.floating) else "<i8"
    return np.ascontiguousarray(a, dtype=kind)


def model_digest(arrays: Mapping[str, Any]) -> str:
    """sha256 (hex) over the arrays in sorted key order: each key, its shape, then its values in the canonical dtype.
    Any change of a name, a shape or one value changes it."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = _canonical(np.asarray(arrays[k]))
        h.update(f"{k}\0{a.dtype.str}\0{tuple(a.shape)}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def imprint_like(arrays: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The received tensors no honest model has: a name (or shape) the client's model does not have, or a weight
    matrix (>= 2 rows, >= 2 entries a row; a conv kernel counts as a matrix of its output channels) whose rows are
    all one non-zero vector — an imprint layer measures every photo with the same vector and bins it by its biases.
    An honest layer's rows are drawn independently at init and stay distinct under training. All-zero rows are
    left alone (a zeroed layer is not a measurement)."""
    found = [k for k in arrays if k not in expected or tuple(np.shape(arrays[k])) != tuple(expected[k])]
    for k, v in arrays.items():
        a = np.asarray(v)
        if k in found or a.ndim < 2 or not np.issubdtype(a.dtype, np.floating):
            continue
        rows = a.reshape(a.shape[0], -1).astype(np.float64)
        if rows.shape[0] < 2 or rows.shape[1] < 2:
            continue
        scale = float(np.linalg.norm(rows[0]))
        if scale > 0 and float(np.abs(rows - rows[0]).max()) <= SAME_ROWS_RTOL * scale:
            found.append(k)
    return found


class TransparencyLog:
    """The append-only digest log (one SQLite file; a connection per call, so any process may use it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute(_SCHEMA)
        return db

    def append(self, run: str, rnd: int, user: str, digest: str) -> None:
        """Log ``user``'s digest for ``rnd`` (a second entry for the same round is ignored: append-only)."""
        db = self._connect()
        try:
            db.execute("INSERT OR IGNORE INTO digests (run, round, user, digest, time) VALUES (?,?,?,?,?)",
                       (run, rnd, user, digest, time.time()))
        finally:
            db.close()

    def round(self, run: str, rnd: int) -> dict[str, str]:
        """Every digest logged for ``rnd`` so far, by user."""
        if not self.path.exists():
            return {}
        db = self._connect()
        try:
            return {str(u): str(d) for u, d in db.execute("SELECT user, digest FROM digests WHERE run=? AND round=?",
                                                          (run, rnd))}
        finally:
            db.close()

    def entries(self) -> list[dict[str, Any]]:
        """The whole log, in order of arrival."""
        if not self.path.exists():
            return []
        db = self._connect()
        try:
            cur = db.execute("SELECT run, round, user, digest, time FROM digests ORDER BY time, rowid")
            return [dict(zip(("run", "round", "user", "digest", "time"), r)) for r in cur]
        finally:
            db.close()


def log_path(rec: Mapping[str, Any], run_dir: str) -> Path:
    """Where the log is: the ``log`` setting (relative: to the run folder), else the run folder's file."""
    given = str(rec.get("log") or "")
    if given and Path(given).is_absolute():
        return Path(given)
    if not run_dir:
        raise RuntimeError("defenses.model_check: the client does not know the run folder; set defenses.model_check.log "
                           "to an absolute path every client can reach")
    return Path(run_dir) / (given or LOG_NAME)


class ModelCheck(Defense[ModelCheckConfig]):
    """Before training: log the received model's digest, compare it with the round's other digests, look for
    imprint-like layers; report the finding in the reply, and with ``action = refuse`` send back no update."""

    name = "model_check"
    help = "model consistency and imprint check"
    config_type = ModelCheckConfig
    section_rank, record_rank = 4, 4

    def validate(self, section: ModelCheckConfig, run: RunView, sections: Mapping[str, Any]) -> None:
        if section.enabled and section.log and not section.log.endswith((".sqlite", ".db")):
            raise ConfigError(f"config key 'defenses.model_check.log': a SQLite file (.sqlite or .db), got "
                              f"{section.log!r}")

    def record(self, section: ModelCheckConfig, run: RunView) -> Record:
        out: Record = {"action": section.action, "imprint_check": section.imprint_check,
                       "quorum": run.clients_in_round()}
        if section.wait_s:
            out["wait_s"] = section.wait_s
        if section.log:
            out["log"] = section.log
        return out

    def describe(self, rec: Record) -> str:
        return f"model_check {rec.get('action', 'flag')}"

    def visibility(self, rec: Record) -> str:
        return ("model_check: the client logs each received model's digest and flags an inconsistent or imprint-like "
                "model" + (" (and refuses to train on it)" if rec.get("action") == "refuse" else ""))

    def check_received(self, rec: Record, received: Received) -> Verdict:
        log = TransparencyLog(log_path(rec, received.run_dir))
        digest = model_digest(received.arrays)
        run = received.run_id
        log.append(run, received.round, received.user, digest)
        others = {u: d for u, d in log.round(run, received.round).items() if u != received.user}
        deadline = time.time() + float(rec.get("wait_s", 0.0))
        quorum = int(rec.get("quorum", 0))
        while len(others) + 1 < quorum and time.time() < deadline:
            time.sleep(_POLL_S)
            others = {u: d for u, d in log.round(run, received.round).items() if u != received.user}
        differ = sorted(u for u, d in others.items() if d != digest)
        layers = imprint_like(received.arrays, received.expected) if rec.get("imprint_check", True) else []
        inconsistent, imprint = bool(differ), bool(layers)
        refused = rec.get("action") == "refuse" and (inconsistent or imprint)
        record: Record = {"saw": len(others), "inconsistent": inconsistent, "imprint": imprint, "refused": refused,
                          "digest": digest[:16]}
        if differ:
            record["differs_from"] = differ
        if layers:
            record["imprint_layers"] = layers[:8]
        return Verdict(record, refused)


MODEL_CHECK = ModelCheck()
DEFENSES.add(MODEL_CHECK.name, MODEL_CHECK, MODEL_CHECK.help)
