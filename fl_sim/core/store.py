"""The run store: runs/<run-id>/store.sqlite (SQLite, WAL), written as the run goes."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from fl_sim.core import schema
from fl_sim.core.errors import FlSimError
from fl_sim.core.schema import INDEXES, SCHEMA
from fl_sim.core.records import AttackResult, ClientUpdate

RUNNING, FINISHED, FAILED, NOT_FINISHED = "running", "finished", "failed", "not-finished"
# An attack that was queued or running when its run ended (killed, crashed, failed): it never will finish.
UNFINISHED = "unfinished"
_PENDING = ("queued", "running")
USER_CHECKS = "user_checks"  # an aggregate's metrics key: each of its users' checks of the model it received


def _epsilon(metrics: dict[str, Any] | None) -> float | None:
    eps = (metrics or {}).get("dp-epsilon")
    return None if eps is None else float(eps)


class StoreError(FlSimError):
    """A run store that cannot be read: missing, truncated, locked, or not an fl-sim store. Names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, from /proc), or None when it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(")") + 2:].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _pid_alive(pid: int | None, since: float | None = None) -> bool:
    """Whether ``pid`` still runs — and, given ``since`` (when it wrote the run), is the same process:
    a process id reused by a later process started after ``since``."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if since is not None:
        started = process_started(pid)
        if started is not None and started > since + 2.0:  # /proc's boot time has 1 s resolution
            return False
    return True


class RunStore:
    """One run's SQLite store. Each write commits, so a killed run keeps what it finished."""

    def __init__(self, path: Path, *, readonly: bool = False, threads: bool = False) -> None:
        """``threads``: the connection may be used from a thread other than its creator's (one at a time)."""
        self.path = path
        self.dir = path.parent
        self._status: str | None = None
        if readonly:
            if not path.is_file():
                raise StoreError(path, "no run store there")
            try:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                version = self._check_version()
            except sqlite3.Error as exc:
                raise StoreError(path, f"unreadable run store ({exc})") from None
            if not {"run", "attacks"} <= tables:
                self._db.close()
                raise StoreError(path, "not an fl-sim run store (no run/attacks tables)")
        else:
            self._db = sqlite3.connect(path, timeout=30, check_same_thread=not threads)
            self._db.execute("PRAGMA journal_mode=WAL")
            fresh = not self._db.execute("SELECT name FROM sqlite_master WHERE name='run'").fetchall()
            version = schema.SCHEMA_VERSION if fresh else self._check_version()
            self._db.executescript(SCHEMA)
            with self._db:  # one transaction per step: a store is at one version or the next, never between
                for v in range(version, schema.SCHEMA_VERSION):
                    schema.MIGRATIONS[v](self._db)
                    self._db.execute(f"PRAGMA user_version = {v + 1}")
            self._db.executescript(INDEXES)
            if fresh:
                self._db.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
            version = schema.SCHEMA_VERSION
        self.version = version
        self._eps_column = "epsilon" in {r[1] for r in self._db.execute("PRAGMA table_info(updates)")}
        self._db.row_factory = sqlite3.Row

    def _check_version(self) -> int:
        """The store's schema version; a newer one than this fl-sim knows is a one-line ``StoreError``."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0]) or 1
        if version > schema.SCHEMA_VERSION:
            self._db.close()
            raise StoreError(self.path, f"written by a newer fl-sim (store schema version {version}; this fl-sim "
                                        f"reads versions 1 to {schema.SCHEMA_VERSION}): upgrade fl-sim to read it")
        return version

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A query's rows; a corrupt, truncated or locked file is a one-line ``StoreError`` naming it."""
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"unreadable run store ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        cur = self._db.execute(sql, args)
        self._db.commit()
        return int(cur.lastrowid or 0)

    # -- writes --------------------------------------------------------------------
    def create_run(self, run_id: str, config: dict[str, Any]) -> None:
        now = time.time()
        self._write("INSERT INTO run (id, created, status, pid, config, started) VALUES (?,?,?,?,?,?)",
                    (run_id, now, RUNNING, os.getpid(), json.dumps(config), now))

    def finish_run(self, status: str, error: str | None = None, summary: dict[str, Any] | None = None) -> None:
        now = time.time()
        self._write("UPDATE run SET status=?, finished=?, seconds=?-started, error=?, summary=?",
                    (status, now, now, error, json.dumps(summary or {})))
        self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the WAL into the database file and truncate it (a reader holding a snapshot: it stays for later)."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass  # busy: SQLite's automatic checkpoints (every 1000 pages) go on

    def resume_run(self, after_round: int) -> None:
        """A killed run goes on in this process: it is running again, and what its unfinished round ``after_round
        + 1`` (and any later) had written is removed: that round is played again, as an uninterrupted run would."""
        with self._db:
            for table in ("updates", "attacks", "rounds"):
                self._db.execute(f"DELETE FROM {table} WHERE round > ?", (after_round,))
            # ``started``: when this process took the run up (its pid is checked against it, see ``run``)
            self._db.execute("UPDATE run SET status=?, pid=?, started=?, finished=NULL, error=NULL",
                             (RUNNING, os.getpid(), time.time()))
        self._status = None

    def add_user(self, user: str, partition_id: int, dataset: str, attributes: dict[str, Any],
                 n_train: int, n_holdout: int, defenses: dict[str, Any] | None = None) -> None:
        self._write("INSERT OR REPLACE INTO users (user, partition_id, dataset, attributes, n_train, n_holdout, defenses)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (user, partition_id, dataset, json.dumps(attributes), n_train, n_holdout, json.dumps(defenses or {})))

    def set_node(self, user: str, node_id: int) -> None:
        self._write("UPDATE users SET node_id=? WHERE user=?", (str(node_id), user))

    def add_round(self, rnd: int, started: float, seconds: float, n_clients: int, train_loss: float | None,
                  accuracy: float | None, metrics: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO rounds VALUES (?,?,?,?,?,?,?)",
                    (rnd, started, seconds, n_clients, train_loss, accuracy, json.dumps(metrics)))

    def add_update(self, *, rnd: int, user: str | None, node_id: int, num_examples: int, local_steps: int, lr: float,
                   loss: float, protocol: str, update_norm: float, layer_norms: dict[str, float],
                   defenses: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> int:
        return self._write(
            "INSERT INTO updates (round, user, node_id, num_examples, local_steps, lr, loss, protocol, update_norm,"
            " layer_norms, defenses, metrics, epsilon) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rnd, user, str(node_id), num_examples, local_steps, lr, loss, protocol, update_norm,
             json.dumps(layer_norms), json.dumps(defenses or {}), json.dumps(metrics or {}), _epsilon(metrics)))

    def add_client_update(self, update: ClientUpdate, *, node_id: int, protocol: str, update_norm: float,
                          layer_norms: dict[str, float], defenses: dict[str, Any] | None = None,
                          user_checks: dict[str, Any] | None = None) -> int:
        """One received update (a user's reply, or an aggregate with ``user`` null) and what it said.
        ``user_checks``: an aggregate's — each of its users' checks of the model it received (user -> checks)."""
        return self.add_update(rnd=update.round, user=update.user, node_id=node_id, num_examples=update.num_examples,
                               local_steps=update.local_steps, lr=update.lr, loss=update.loss, protocol=protocol,
                               update_norm=update_norm, layer_norms=layer_norms, defenses=defenses,
                               metrics={**update.stored_metrics(), **dict(update.checks or {}),
                                        **({USER_CHECKS: user_checks} if user_checks else {})})

    def add_attack(self, *, rnd: int, user: str | None, method: str, status: str, aggregate_size: int = 1,
                   defenses: dict[str, Any] | None = None) -> int:
        return self.add_attacks([{"rnd": rnd, "user": user, "method": method, "status": status,
                                  "aggregate_size": aggregate_size, "defenses": defenses}])[0]

    def add_attacks(self, rows: list[dict[str, Any]]) -> list[int]:
        """Several ``add_attack`` rows in one transaction (one commit: the server's round waits on it); a row's
        optional ``metrics`` are stored at once (e.g. a no-signal row's notes)."""
        ids = []
        now = time.time()
        for r in rows:
            cur = self._db.execute(
                "INSERT INTO attacks (round, user, aggregate_size, method, status, created, defenses, error, metrics)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (r["rnd"], r["user"], r.get("aggregate_size", 1), r["method"], r["status"], now,
                 json.dumps(r.get("defenses") or {}), r.get("error"), json.dumps(r["metrics"]) if r.get("metrics")
                 else None))
            ids.append(int(cur.lastrowid or 0))
        self._db.commit()
        return ids

    def attacks_final(self, attack_ids: list[int]) -> bool:
        """Whether every one of these attacks has an outcome (none is still queued or running)."""
        marks = ",".join("?" * len(attack_ids))
        rows = self._read(f"SELECT status FROM attacks WHERE id IN ({marks})", tuple(attack_ids))
        return len(rows) == len(attack_ids) and all(r[0] not in _PENDING for r in rows)

    def delete_attacks(self, attack_ids: list[int]) -> None:
        """Remove attack rows that never finished (a resumed run queues their job again)."""
        self._db.executemany("DELETE FROM attacks WHERE id=?", [(int(a),) for a in attack_ids])
        self._db.commit()

    def mark_running(self, attack_ids: list[int]) -> None:
        """The worker took up these attacks (one commit)."""
        now = time.time()
        self._db.executemany("UPDATE attacks SET status='running', started=? WHERE id=?", [(now, a) for a in attack_ids])
        self._db.commit()

    def update_attack(self, attack_id: int, *, status: str, metrics: dict[str, Any] | None = None,
                      image: str | None = None, error: str | None = None, commit: bool = True) -> None:
        """An attack's outcome (``running`` is ``mark_running``'s); ``commit=False`` batches several
        updates into the next ``commit()``."""
        now = time.time()
        self._db.execute("UPDATE attacks SET status=?, finished=?, seconds=?-COALESCE(started, created), metrics=?,"
                         " image=?, error=? WHERE id=?", (status, now, now, json.dumps(metrics or {}), image, error,
                                                          attack_id))
        if commit:
            self._db.commit()

    def record_attack(self, attack_id: int, result: AttackResult, *, commit: bool = True) -> None:
        """An attack's result from the worker (status, metrics, image, error)."""
        self.update_attack(attack_id, status=result.status, metrics=result.metrics, image=result.image,
                           error=result.error, commit=commit)

    def add_worker(self, where: dict[str, Any]) -> None:
        """The attack worker (re)started: its process, Ray node and device (``AttackWorker.where``)."""
        self._write("INSERT INTO workers (started, pid, node_id, node_ip, device) VALUES (?,?,?,?,?)",
                    (time.time(), where.get("pid"), where.get("node_id"), where.get("node_ip"), where.get("device")))

    def commit(self) -> None:
        self._db.commit()

    # -- reads ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        rows = self._read("SELECT * FROM run")
        if not rows:
            return {}
        out = dict(rows[0])
        try:
            out["config"] = json.loads(out["config"] or "{}")
            out["summary"] = json.loads(out["summary"] or "{}")
        except ValueError as exc:
            raise StoreError(self.path, f"unreadable run store (bad JSON in the run row: {exc})") from None
        if out["status"] == RUNNING and not _pid_alive(out["pid"], out.get("started") or out.get("created")):
            out["status"] = NOT_FINISHED  # the process that wrote it is gone: killed or crashed
        self._status = out["status"]
        return out

    def status(self) -> str | None:
        """The run's status as ``run()`` derives it (read once per store object)."""
        if self._status is None:
            self.run()
        return self._status

    def _rows(self, sql: str, json_cols: tuple[str, ...] = (), args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        out = []
        for row in self._read(sql, args):
            d = dict(row)
            try:
                for c in json_cols:
                    d[c] = json.loads(d[c]) if d.get(c) else {}
            except ValueError as exc:
                raise StoreError(self.path, f"unreadable run store (bad JSON: {exc})") from None
            out.append(d)
        return out

    def users(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM users ORDER BY partition_id", ("attributes", "defenses"))

    def rounds(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM rounds ORDER BY round", ("metrics",))

    def updates(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM updates ORDER BY round, id", ("layer_norms", "defenses", "metrics"))

    def checks(self, name: str) -> dict[int, dict[str, dict[str, Any]]]:
        """Per round, per user: what the client-side check ``name`` (a defense, e.g. ``model_check``) reported about
        the model that user received (stored in its update's metrics, or under SecAgg+ in the aggregate's
        ``user_checks``; rounds and users without one are absent)."""
        out: dict[int, dict[str, dict[str, Any]]] = {}
        # Only the rows that mention a check (LIKE in SQL): a large store's other updates are never parsed.
        rows = self._rows("SELECT * FROM updates WHERE metrics LIKE ? OR metrics LIKE ? ORDER BY round, id",
                          ("layer_norms", "defenses", "metrics"), (f'%"{name}"%', f'%"{USER_CHECKS}"%'))
        for u in rows:
            rec = u["metrics"].get(name)
            if isinstance(rec, dict) and u["user"] is not None:
                out.setdefault(int(u["round"]), {})[str(u["user"])] = rec
            for user, checks in (u["metrics"].get(USER_CHECKS) or {}).items():
                if isinstance(checks.get(name), dict):
                    out.setdefault(int(u["round"]), {})[str(user)] = checks[name]
        return out

    def counts(self) -> dict[str, Any]:
        """Rounds recorded, and attacks by status (pending ones of a run that is over read ``unfinished``)."""
        rounds = int(self._read("SELECT COUNT(*) FROM rounds")[0][0])
        attacks = {str(r[0]): int(r[1]) for r in self._read("SELECT status, COUNT(*) FROM attacks GROUP BY status")}
        if any(s in attacks for s in _PENDING) and self.status() != RUNNING:
            attacks[UNFINISHED] = attacks.get(UNFINISHED, 0) + sum(attacks.pop(s, 0) for s in _PENDING)
        return {"rounds": rounds, "attacks": attacks}

    def last_accuracy(self) -> float | None:
        """The last recorded round's held-out accuracy (None: no round yet, or no utility evaluation)."""
        rows = self._read("SELECT accuracy FROM rounds ORDER BY round DESC LIMIT 1")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def epsilons(self) -> dict[tuple[int, str], float]:
        """Each (round, user)'s DP-SGD epsilon after that round, for the updates that report one."""
        if self._eps_column and self.version >= 2:
            rows = self._read("SELECT round, user, epsilon FROM updates WHERE user IS NOT NULL AND epsilon IS NOT NULL")
            return {(int(r[0]), str(r[1])): float(r[2]) for r in rows}
        # A v1 store opened read-only (nothing migrates it): the epsilon is in the metrics JSON.
        # LIKE narrows the rows in SQL; the JSON is parsed here (the stored JSON may hold NaN, which SQLite's rejects).
        out: dict[tuple[int, str], float] = {}
        for r in self._read("SELECT round, user, metrics FROM updates "
                            "WHERE user IS NOT NULL AND metrics LIKE '%\"dp-epsilon\"%'"):
            try:
                eps = json.loads(r[2]).get("dp-epsilon")
            except ValueError as exc:
                raise StoreError(self.path, f"unreadable run store (bad JSON: {exc})") from None
            if eps is not None:
                out[(int(r[0]), str(r[1]))] = float(eps)
        return out

    def attack_image(self, attack_id: int) -> str | None:
        """The image path (relative to the run folder) attack ``attack_id`` recorded; None: no such attack or image."""
        rows = self._read("SELECT image FROM attacks WHERE id = ?", (int(attack_id),))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def workers(self) -> list[dict[str, Any]]:
        """Each start of the attack worker, in order (a store written before workers were recorded: none)."""
        tables = {r[0] for r in self._read("SELECT name FROM sqlite_master WHERE type='table'")}
        return self._rows("SELECT * FROM workers ORDER BY id") if "workers" in tables else []

    def attacks(self) -> list[dict[str, Any]]:
        """Every attack row; one still ``queued``/``running`` in a run that is over (finished, failed,
        or its writer gone) reads ``unfinished``: nothing will ever take it up."""
        rows = self._rows("SELECT * FROM attacks ORDER BY round, id", ("metrics", "defenses"))
        if any(a["status"] in _PENDING for a in rows) and self.status() != RUNNING:
            for a in rows:
                if a["status"] in _PENDING:
                    a["status"] = UNFINISHED
        return rows

    def export(self) -> dict[str, Any]:
        """Everything about the run, for scripts; image paths are absolute."""
        run = self.run()
        attacks = []
        for a in self.attacks():
            a = {**a, **{k: v for k, v in a["metrics"].items() if k not in a}}
            if a.get("image"):
                a["image"] = str((self.dir / a["image"]).resolve())
            attacks.append(a)
        return {"run": {k: v for k, v in run.items() if k != "config"}, "config": run.get("config", {}),
                "users": self.users(), "rounds": self.rounds(), "updates": self.updates(), "attacks": attacks,
                "workers": self.workers()}


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """A summary row for every run folder, newest first; unreadable folders say so."""
    rows: list[dict[str, Any]] = []
    if not runs_dir.exists():
        return rows
    for d in sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        db = d / "store.sqlite"
        if not db.exists():
            continue
        try:
            st = RunStore(db, readonly=True)
            run = st.run()
            rounds = st.rounds()
            n_users = len(st.users())
            st.close()
            rows.append({"id": d.name, "status": run.get("status"), "created": run.get("created"),
                         "rounds_done": len(rounds), "rounds": run.get("config", {}).get("rounds"),
                         "users": n_users, "seconds": run.get("seconds"),
                         "accuracy": rounds[-1]["accuracy"] if rounds else None})
        except StoreError as exc:
            rows.append({"id": d.name, "status": f"unreadable ({exc.reason})"})
        except sqlite3.Error as exc:
            rows.append({"id": d.name, "status": f"unreadable ({exc})"})
    return rows
