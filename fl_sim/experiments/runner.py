"""One federation as the command line runs it: config settled first, a banner, a line per round, the result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fl_sim.core.config import RunConfig, load_config
from fl_sim.core.fmt import number
from fl_sim.federation import RunResult, prepare_users, run_federation

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
    if cfg.attack.enabled:
        attacked = [r for r in range(1, cfg.rounds + 1) if cfg.attacked_round(r)]
        lines.append(f"curious server: {', '.join(cfg.attack.methods)} on users {cfg.attack.users} in rounds "
                     f"{', '.join(map(str, attacked)) or 'none'} ({cfg.attack.iterations} iterations)")
    return lines


def progress_line(cfg: RunConfig, rnd: int, rec: dict[str, Any]) -> str:
    """One line per finished round (rnd < 0: the federation is done, attack jobs still draining)."""
    if rnd < 0:
        return f"federation done; waiting for {rec['draining']} attack job(s) to finish"
    ev = rec["evaluate"]
    heads = "  ".join(f"{k[4:]} {number(v, 2)}" for k, v in ev.items() if k.startswith("acc_"))
    return (f"round {rnd}/{cfg.rounds}  clients {rec['n_clients']}  train loss {number(rec['train'].get('loss'))}"
            f"  held-out acc {number(ev.get('accuracy'))} ({heads})  {rec['seconds']:.1f}s")


def run_with_progress(config: Path | None, overrides: list[str], runs_dir: Path,
                      say: Callable[[str], None]) -> RunResult:
    """Load and check the config (data errors before the banner), then run it, saying each round."""
    cfg = load_config(config, overrides)
    asked = cfg.task
    prepare_users(cfg)  # data errors first (and task=auto settled): the banner is only printed for a run that will start
    for line in banner(cfg, asked):
        say(line)
    return run_federation(cfg, runs_dir, lambda rnd, rec: say(progress_line(cfg, rnd, rec)))
