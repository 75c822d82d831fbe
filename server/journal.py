"""The attack jobs a curious server has taken on and not finished, on disk (runs/<id>/attack_jobs/): a resumed run
queues again the attacks that a kill left unfinished in the rounds that were done."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

DIR = "attack_jobs"


class JobJournal:
    """One file per round handed to the dispatcher: what it was handed (the round's replies and the model they were
    computed on), and once its attack rows exist, their ids. The file goes when the job's results are stored."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / DIR
        self._seq = max((int(p.stem.split("-")[1]) for p in self.dir.glob("r*-*.pkl")), default=0)

    def _write(self, path: Path, entry: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # whole or not at all

    def add(self, rnd: int, item: tuple[Any, ...]) -> Path:
        """Keep ``item`` (the dispatcher's arguments for round ``rnd``) before the round is declared done."""
        self.dir.mkdir(exist_ok=True)
        self._seq += 1
        path = self.dir / f"r{rnd:05d}-{self._seq:06d}.pkl"
        self._write(path, {"round": rnd, "item": item, "ids": None})
        return path

    def dispatched(self, path: Path, ids: list[int]) -> None:
        """The job's attack rows now exist: a resume finds them by these ids."""
        with open(path, "rb") as f:
            entry = pickle.load(f)
        self._write(path, {**entry, "ids": ids})

    @staticmethod
    def done(path: Path | None) -> None:
        if path is not None:
            path.unlink(missing_ok=True)

    def leftovers(self, after_round: int) -> list[tuple[Path, dict[str, Any]]]:
        """The jobs of rounds up to ``after_round`` still on disk, oldest first; those of later rounds are dropped
        (a resumed run plays those rounds again, and hands their jobs over anew)."""
        out = []
        for path in sorted(self.dir.glob("r*-*.pkl")):
            if int(path.stem[1:].split("-")[0]) > after_round:
                path.unlink()
                continue
            with open(path, "rb") as f:
                out.append((path, pickle.load(f)))
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()
        return out
