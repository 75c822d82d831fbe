"""Progress you can see: bars with counts on a terminal, plain text (no ANSI) everywhere else, the terminal's width."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from fl_sim.cli.common import PLAIN_WIDTH, TermConsole
from fl_sim.experiments.progress import Bar
from fl_sim.experiments.runner import follow_drain
from tests.conftest import FL_SIM, REPO
from tests.test_curious import dispatcher  # noqa: F401 - the real dispatcher fixture (a Ray worker)

ESC = "\x1b"


def _forced(width: int = 100) -> Console:
    return Console(force_terminal=True, record=True, file=io.StringIO(), width=width, color_system="standard")


def test_plain_console_is_120_columns_plain_text_and_a_bar_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()
    c = TermConsole(file=buf)
    assert not c.is_terminal and c.width == PLAIN_WIDTH
    with Bar(c, "audit") as bar:
        bar.update(0, 8)
        bar.say("audit: calibrating")
        bar.update(3, 8, eta=10.0)
    c.print("[bold]table[/bold] " + "x" * 110)
    text = buf.getvalue()
    assert ESC not in text  # no colours, no cursor moves, no bar frames
    assert text == "audit: calibrating\ntable " + "x" * 110 + "\n"  # exactly the lines, one wide line unwrapped


def test_width_follows_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "77")
    assert TermConsole(file=io.StringIO()).width == 77
    assert TermConsole(file=io.StringIO(), force_terminal=True).width == 77
    monkeypatch.setenv("COLUMNS", "160")
    assert TermConsole(stderr=True).width == 160


def test_a_terminal_bar_shows_counts_and_eta() -> None:
    c = _forced()
    with Bar(c, "attacks") as bar:
        bar.update(3, 8, eta=75.0)
        bar.say("a line above the bar")
    text = c.export_text()
    assert "3/8" in text and "ETA 0:01:1" in text and "a line above the bar" in text and "attacks" in text


def test_the_drain_bar_counts_the_real_dispatchers_attacks(dispatcher) -> None:  # noqa: ANN001
    from tests.test_curious import _job

    d, store, obs, cfg, run_dir = dispatcher
    seen = []
    c = _forced()
    bar = Bar(c, "attacks")
    d.watch(seen.append)
    d.watch(follow_drain(bar))
    for rnd in (1, 2):
        job, ids = _job(d, obs, cfg, run_dir, rnd, iterations=2)
        d.submit(job, ids)
    assert d.status().attacks_total == 4 and d.status().jobs_total == 2  # 2 users x ig, 2 jobs
    d.drain(120)
    assert seen[0].draining and seen[-1].over
    assert (seen[-1].jobs_done, seen[-1].jobs_total, seen[-1].attacks_done, seen[-1].attacks_total) == (2, 2, 4, 4)
    assert [s.attacks_done for s in seen] == sorted(s.attacks_done for s in seen)  # never goes back
    assert seen[-1].job_seconds is not None and seen[-1].eta == 0.0
    text = c.export_text()
    assert "4/4" in text and "drain over" in text
    assert bar._progress is None  # stopped when the drain ended


def test_a_run_on_a_pipe_stays_plain_and_stdout_is_json(tmp_path: Path) -> None:
    """stderr is a pipe here: today's lines (the drain's one line included), no bar, no ANSI; stdout only JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COLUMNS", None)
    env.pop("FORCE_COLOR", None)
    r = subprocess.run([str(FL_SIM), "run", "--json", "--runs-dir", str(tmp_path), "--set", "users=2", "--set", "rounds=1",
                        "--set", "data.image_size=16", "--set", "data.photos_per_user=4", "--set", "data.holdout_per_user=2", "--set", "model.width=4",
                        "--set", "attack.enabled=true", "--set", "attack.methods=ig", "--set", "attack.iterations=2"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["status"] == "finished"
    assert ESC not in r.stderr and ESC not in r.stdout
    assert "federation done; waiting for" in r.stderr
    assert "━" not in r.stderr and "ETA" not in r.stderr  # no bar on a pipe


def test_audit_and_prior_eval_step_through_their_stages_to_the_end() -> None:
    """The counts the audit and prior-eval bars draw: from 0 of the total, never back, ending at the total."""
    from fl_sim.experiments.audit import AuditSettings, run_audit
    from fl_sim.experiments.prior_eval import SIGMAS, prior_report

    steps: list[tuple[int, int]] = []
    run_audit([0.001, 64], AuditSettings(data="mnist:test", images=2, ddim_steps=1, samples=1),
              step=lambda d, t: steps.append((d, t)))
    assert steps[0] == (0, 2) and steps[-1] == (2, 2) and [d for d, _ in steps] == sorted(d for d, _ in steps)

    steps.clear()
    prior_report("faces32", 2, memo=False, step=lambda d, t: steps.append((d, t)))
    assert steps == [(i, len(SIGMAS)) for i in range(len(SIGMAS) + 1)]
