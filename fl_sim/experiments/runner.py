"""One federation as the command line runs it: config settled first, a banner, a line per round, the result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_sim.core.config import RunConfig, load_config
from fl_sim.core.fmt import number
from fl_sim.federation import RunResult, check_runs_dir, prepare_users, run_federation

from fl_sim.experiments.progress import Bar

if TYPE_CHECKING:
    from rich.console import Console

# The demo's curious server: both methods on every user in the first round (untrained model)
# and the last (trained), so the panels show what training does to each attack.
DEMO_OVERRIDES = ["attack.enabled=true", "attack.every=5"]


def banner(cfg: RunConfig, asked_task: str) -> list[str]:
    """What is about to run: the settled task (when it was auto), the federation, the curious server."""
    lines = []
    if asked_task == "auto":
        why = "every user has gender/age labels" if cfg.task == "attributes" else \
            "not every user has gender/age labels, so each user is a class"
        lines.append(f"task=auto: {cfg.task} ({why}; set task= to choose)")
    lines.append(f"federation: {cfg.users} users, {cfg.rounds} rounds, {cfg.protocol}, task {cfg.task}, "
                 f"model {cfg.model.name}, data {cfg.data.dataset} @ {cfg.data.image_size}px")
    adv = cfg.adversary
    if adv.mode == "malicious":
        when = ", ".join(map(str, adv.rounds)) if adv.rounds else "every round"
        lines.append(f"malicious server: tactic {adv.tactic} on users {adv.users} in {when} "
                     "(clients are sent crafted parameters)")
    if cfg.attack.enabled:
        attacked = [r for r in range(1, cfg.rounds + 1) if cfg.attacked_round(r)]
        lines.append(f"curious server: {', '.join(cfg.attack.methods)} on users {cfg.attack.users} in rounds "
                     f"{', '.join(map(str, attacked)) or 'none'} ({cfg.attack.iterations or 'default'} iterations)")
    return lines


def progress_line(cfg: RunConfig, rnd: int, rec: dict[str, Any]) -> str:
    """One line per finished round (rnd < 0: the federation is done, attack jobs still draining)."""
    if rnd < 0:
        return f"federation done; waiting for {rec['draining']} attack job(s) to finish"
    ev = rec["evaluate"]
    heads = "  ".join(f"{k[4:]} {number(v, 2)}" for k, v in ev.items() if k.startswith("acc_"))
    failed = rec.get("failed") or {}
    dropped = f" ({len(failed)} failed: {', '.join(sorted(failed))})" if failed else ""
    return (f"round {rnd}/{cfg.rounds}  clients {rec['n_clients']}{dropped}  train loss {number(rec['train'].get('loss'))}"
            f"  held-out acc {number(ev.get('accuracy'))} ({heads})  {rec['seconds']:.1f}s")


def drain_label(st: Any) -> str:
    """The drain bar's label: jobs (attacked rounds) still pending."""
    return f"attacks ({st.pending_jobs} job(s) left)" if not st.over else "attacks (drain over)"


def follow_drain(bar: Bar) -> Callable[[Any], None]:
    """A dispatcher watcher (``AttackDispatcher.watch``) that draws the drain on ``bar``: attacks done of
    the run's total, jobs left in the label; the bar starts with the drain and stops when it is over."""
    def follow(st: Any) -> None:
        if not st.draining:
            return  # a job the pump collected before the drain began: the drain's first call counts it
        bar.describe(drain_label(st))
        bar.update(st.attacks_done, st.attacks_total, eta=st.eta)
        bar.start()
        if st.over:
            bar.stop()

    return follow


Launch = Callable[[RunConfig, Path, Callable[[int, dict[str, Any]], None]], RunResult]


def run_with_progress(config: Path | None, overrides: list[str], runs_dir: Path,
                      say: Callable[[str], None], console: Console | None = None,
                      launch: Launch | None = None) -> RunResult:
    """Load and check the config (data errors before the banner), then run it, saying each round.

    ``launch(cfg, runs_dir, progress)`` runs it (default: ``run_federation``, the Simulation Engine in this
    process; ``fl-sim deploy`` passes a deployment's).

    With a ``console`` that is a terminal, the attack drain at the end also gets a bar (attacks
    done/total of the whole run, ETA); on any other console the lines are all there is.
    """
    cfg = load_config(config, overrides)
    asked = cfg.task
    prepare_users(cfg)  # data errors first (and task=auto settled): the banner is only printed for a run that will start
    check_runs_dir(runs_dir)
    for line in banner(cfg, asked):
        say(line)
    return _with_progress(cfg, say, console, lambda on_progress: (launch or run_federation)(cfg, runs_dir, on_progress))


def resume_with_progress(run_id: str, runs_dir: Path, say: Callable[[str], None],
                         console: Console | None = None) -> RunResult:
    """``fl-sim run --resume``: continue a killed run, saying each round as ``run_with_progress`` does."""
    from fl_sim.federation import resume_federation

    progress: list[Callable[[int, dict[str, Any]], None]] = []  # set once the run's config is read
    bars: list[Bar] = []

    def announce(cfg: RunConfig, done: int) -> None:
        say(f"resuming {run_id}: {cfg.users} users, rounds {done + 1}..{cfg.rounds} of {cfg.rounds}")
        progress.append(_progress(cfg, say, console, bars))

    try:
        return resume_federation(runs_dir, run_id, lambda rnd, rec: progress[0](rnd, rec), announce)
    finally:
        for bar in bars:
            bar.stop()


def _progress(cfg: RunConfig, say: Callable[[str], None], console: Console | None,
              bars: list[Bar]) -> Callable[[int, dict[str, Any]], None]:
    """Say each round; follow the attack drain with a bar on a terminal console."""
    def on_progress(rnd: int, rec: dict[str, Any]) -> None:
        say(progress_line(cfg, rnd, rec))
        if rnd < 0 and console is not None and "watch" in rec:
            bar = Bar(console, "attacks")
            bars.append(bar)
            rec["watch"](follow_drain(bar))

    return on_progress


def _with_progress(cfg: RunConfig, say: Callable[[str], None], console: Console | None,
                   go: Callable[[Callable[[int, dict[str, Any]], None]], RunResult]) -> RunResult:
    bars: list[Bar] = []
    try:
        return go(_progress(cfg, say, console, bars))
    finally:
        for bar in bars:
            bar.stop()
