"""The `fl-sim` command line: parses, calls one function, prints."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from fl_sim.cli import audit as audit_cli
from fl_sim.core.errors import FlSimError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fl-sim: how much a curious federated-learning server learns about each user.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the run configuration.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: embedded identities and loaders.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (numbers go to docs/BENCHMARKS.md).")
prior_app = typer.Typer(no_args_is_help=True, help="Diffusion priors: train, sample, evaluate.")
app.add_typer(prior_app, name="prior")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
audit_cli.register(app)  # fl-sim audit: visual privacy audit of DP-SGD (fl_sim/audit.py)

# Wide consoles: progress lines and tables read badly wrapped at 80 columns in logs.
out = Console(width=120)
err = Console(stderr=True, width=120)

RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="folder holding run folders")
CONFIG = typer.Option(None, "--config", help="TOML run config")


def _json(obj: Any) -> None:
    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    sys.stdout.write(json.dumps(clean(obj), indent=2) + "\n")


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _run_dir(runs_dir: Path, run: str) -> Path:
    d = Path(run) if Path(run).is_dir() and (Path(run) / "store.sqlite").exists() else runs_dir / run
    if not (d / "store.sqlite").exists():
        raise FlSimError(f"no run {run!r} in {runs_dir} (fl-sim runs lists them)")
    return d


# -- run ---------------------------------------------------------------------------------
@app.command()
def run(config: Optional[Path] = CONFIG, set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value override"),
        runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Run a simulated federation and record it in runs/<run-id>/."""
    _run(config, set_ or [], runs_dir, as_json)


@app.command()
def sweep(config: Optional[Path] = CONFIG, set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value for every run"),
          grid: Optional[list[str]] = typer.Option(None, "--grid", help="key=v1,v2,... (several --grid: their product)"),
          baseline: bool = typer.Option(False, "--baseline", help="also run the base config (defense off) as reference lines"),
          runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Run a grid of federations; table and plot of leakage and utility against the swept parameter."""
    from fl_sim.experiments.sweep import parse_grid, run_sweep

    doc = run_sweep(config, set_ or [], parse_grid(grid or []), runs_dir, progress=err.print, baseline=baseline)
    if as_json:
        _json(doc)
        return
    t = Table(title=f"sweep over {doc['param']} ({doc['sweep_id']})")
    from fl_sim.core.scoring import EVALUATORS
    from fl_sim.core.fmt import format_ci

    for c in (doc["param"], "epsilon", "accuracy", "identity gain", *(f"re-id ({ev})" for ev in EVALUATORS), "gender",
              "strongest", "run"):
        t.add_column(c)
    for r in [*doc["rows"], *([doc["baseline"]] if doc.get("baseline") else [])]:
        t.add_row(str(r["value"] if r["value"] is not None else "baseline"), _fmt(r.get("epsilon"), 2),
                  format_ci(r.get("accuracy"), r.get("accuracy_ci"), 3),
                  format_ci(r.get("identity_gain"), r.get("identity_gain_ci"), 3) + (" ⚠" if r.get("evaluators_disagree") else ""),
                  *(format_ci(r.get(f"{ev}_reid_top1"), r.get(f"{ev}_reid_top1_ci"), 2) for ev in EVALUATORS),
                  format_ci(r.get("gender_accuracy"), r.get("gender_accuracy_ci"), 2), str(r.get("strongest_method") or "-"),
                  r["run_id"])
    out.print(t)
    out.print(f"table {doc['table']}\nplot  {doc['plot']}")
    if any(r["status"] != "finished" for r in doc["rows"]):
        raise typer.Exit(1)


def _run(config: Optional[Path], overrides: list[str], runs_dir: Path, as_json: bool) -> Path:
    """Run, print the rounds (or JSON), exit 1 on a failed run; returns the run folder."""
    from fl_sim.core.config import load_config
    from fl_sim.federation import prepare_users, run_federation

    cfg = load_config(config, overrides)
    asked = cfg.task
    prepare_users(cfg)  # data errors first (and task=auto settled): the banner is only printed for a run that will start

    def progress(rnd: int, rec: dict[str, Any]) -> None:
        if rnd < 0:
            err.print(f"federation done; waiting for {rec['draining']} attack job(s) to finish")
            return
        ev = rec["evaluate"]
        heads = "  ".join(f"{k[4:]} {_fmt(v, 2)}" for k, v in ev.items() if k.startswith("acc_"))
        err.print(f"round {rnd}/{cfg.rounds}  clients {rec['n_clients']}  train loss {_fmt(rec['train'].get('loss'))}"
                  f"  held-out acc {_fmt(ev.get('accuracy'))} ({heads})  {rec['seconds']:.1f}s")

    if asked == "auto":
        why = "every user has gender/age labels" if cfg.task == "attributes" else \
            "not every user has gender/age labels, so each user is a class"
        err.print(f"task=auto: {cfg.task} ({why}; set task= to choose)")
    err.print(f"federation: {cfg.users} users, {cfg.rounds} rounds, {cfg.protocol}, task {cfg.task}, "
              f"model {cfg.model.name}, data {cfg.data.dataset} @ {cfg.data.image_size}px")
    if cfg.attack.enabled:
        attacked = [r for r in range(1, cfg.rounds + 1) if cfg.attacked_round(r)]
        err.print(f"curious server: {', '.join(cfg.attack.methods)} on users {cfg.attack.users} in rounds "
                  f"{', '.join(map(str, attacked)) or 'none'} ({cfg.attack.iterations} iterations)")
    res = run_federation(cfg, runs_dir, progress)
    if as_json:
        _json({"run_id": res.run_id, "run_dir": str(res.run_dir), "status": res.status, "seconds": res.seconds,
               "error": res.error})
    else:
        _print_rounds(res.run_dir)
        out.print(f"run {res.run_id}: {res.status} in {res.seconds:.1f}s — store {res.run_dir / 'store.sqlite'}")
    if res.status != "finished":
        err.print(f"run failed: {res.error}")
        raise typer.Exit(1)
    return res.run_dir


def _print_rounds(run_dir: Path) -> None:
    from fl_sim.core.store import RunStore

    st = RunStore(run_dir / "store.sqlite", readonly=True)
    rounds = st.rounds()
    st.close()
    t = Table(title=f"rounds of {run_dir.name}")
    for c in ("round", "clients", "train loss", "held-out acc", "per head", "seconds"):
        t.add_column(c)
    for r in rounds:
        ev = r["metrics"].get("evaluate", {})
        heads = " ".join(f"{k[4:]}={_fmt(v, 2)}" for k, v in ev.items() if k.startswith("acc_"))
        t.add_row(str(r["round"]), str(r["n_clients"]), _fmt(r["train_loss"]), _fmt(r["accuracy"]), heads,
                  f"{r['seconds']:.1f}")
    out.print(t)
    if len(rounds) >= 2 and rounds[0]["accuracy"] is not None and rounds[-1]["accuracy"] is not None:
        delta = rounds[-1]["accuracy"] - rounds[0]["accuracy"]
        out.print(f"held-out accuracy round 1 -> {rounds[-1]['round']}: {_fmt(rounds[0]['accuracy'])} -> "
                  f"{_fmt(rounds[-1]['accuracy'])} ({'+' if delta >= 0 else ''}{delta:.3f})")


# The demo's curious server: both methods on every user in the first round (untrained model)
# and the last (trained), so the panels show what training does to each attack.
DEMO_OVERRIDES = ["attack.enabled=true", "attack.every=5"]


@app.command()
def demo(runs_dir: Path = RUNS_DIR) -> None:
    """Run the embedded default federation with the curious server on, and say where to look."""
    from fl_sim.experiments.inspect_run import attack_summary, attack_table, context_lines, user_panel
    from fl_sim.core.store import RunStore

    run_dir = _run(None, DEMO_OVERRIDES, runs_dir, as_json=False)
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    rows, summary = attack_table(st), attack_summary(st)
    st.close()
    _attack_rich_table(rows, f"attacks in {run_dir.name}")
    _summary_lines(summary)
    ctx = context_lines(run_dir)
    panels = [user_panel(run_dir, u, context=ctx)[0] for u in sorted({r["user"] for r in rows if r["user"]})]
    out.print(_context_text(ctx))
    out.print("\nwhere to look:")
    out.print(f"  {run_dir / 'panels'}/   # one PNG per attacked user ({len(panels)}): photos | each reconstruction")
    out.print(f"  fl-sim inspect {run_dir.name} --runs-dir {runs_dir} [--user U] [--round R] [--json]")
    out.print(f"  fl-sim export {run_dir.name} --runs-dir {runs_dir}   # everything about the run, as JSON")
    out.print(f"  fl-sim runs --runs-dir {runs_dir}                       # every run and its status")
    out.print(f"  {run_dir / 'store.sqlite'}   # the run store (SQLite)")


def _context_text(ctx: dict[str, float]) -> str:
    return (f"context: a user's own photos match each other at {ctx['within_user_min']:.2f}..{ctx['within_user_max']:.2f} "
            f"(mean {ctx['within_user_mean']:.2f}); different users at {ctx['between_user_mean']:.2f} on average")


@app.command()
def runs(runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the runs, newest first, with their status."""
    from fl_sim.core.store import list_runs

    rows = list_runs(runs_dir)
    if as_json:
        _json(rows)
        return
    t = Table(title=f"runs in {runs_dir}")
    for c in ("run", "status", "rounds", "users", "held-out acc", "seconds"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["id"], str(r.get("status")), f"{r.get('rounds_done', '-')}/{r.get('rounds', '-')}",
                  str(r.get("users", "-")), _fmt(r.get("accuracy")), _fmt(r.get("seconds"), 1))
    out.print(t)


@app.command()
def export(run: str, runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(True, "--json/--no-json")) -> None:
    """Everything about a run as JSON: run, config, users, rounds, updates, attacks."""
    from fl_sim.core.store import RunStore

    st = RunStore(_run_dir(runs_dir, run) / "store.sqlite", readonly=True)
    try:
        _json(st.export())
    finally:
        st.close()


@app.command()
def inspect(run: str, user: Optional[str] = typer.Option(None, "--user"), rnd: Optional[int] = typer.Option(None, "--round"),
            runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Attacked rounds per user: similarity, re-identification rank, inferred vs true attributes."""
    from fl_sim.experiments.inspect_run import attack_summary, attack_table, context_lines, user_panel
    from fl_sim.core.store import RunStore

    run_dir = _run_dir(runs_dir, run)
    if user is not None:
        ctx = context_lines(run_dir)
        path, rows = user_panel(run_dir, user, rnd, context=ctx)
        if as_json:
            _json({"panel": str(path), "attacks": rows, "context": ctx})
            return
        _attack_rich_table(rows, f"user {user}")
        out.print(_context_text(ctx))
        out.print(f"panel: {path}")
        return
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    rows, summary = attack_table(st), attack_summary(st)
    st.close()
    if as_json:
        _json({"attacks": rows, "summary": summary})
        return
    if not rows:
        out.print(f"run {run_dir.name} has no attacks (set attack.enabled=true)")
        return
    _attack_rich_table(rows, f"attacks in {run_dir.name}")
    _summary_lines(summary)


def _attack_rich_table(rows: list[dict[str, Any]], title: str) -> None:
    t = Table(title=title)
    from fl_sim.core.scoring import EVALUATORS

    for c in ("round", "user", "method", "status", *(f"{ev} sim / rank" for ev in EVALUATORS), "identity gain",
              "gender (inferred/true)", "age (inferred/true)", "defenses"):
        t.add_column(c)
    for r in sorted(rows, key=lambda r: (str(r["user"]), r["round"], r["method"])):
        who = r["user"] if r["user"] is not None else f"aggregate of {r['aggregate_size']}"
        cells = []
        for ev in EVALUATORS:
            if r["user"] is None and r.get(f"{ev}_best_match") is not None:  # an aggregate: its best-matching user
                cells.append(f"{_fmt(r[f'{ev}_best_match_similarity'])} ({r[f'{ev}_best_match']})")
            elif r.get(f"{ev}_reid_rank") is not None:
                cells.append(f"{_fmt(r[f'{ev}_face_similarity'])} / {r[f'{ev}_reid_rank']}/{r['n_users']}")
            else:
                cells.append("-")
        t.add_row(str(r["round"]), who, r["method"], r["status"], *cells, _fmt(r.get("identity_gain")),
                  f"{r['inferred_gender'] or '-'}/{r['true_gender'] or '-'}",
                  f"{r['inferred_age_band'] or '-'}/{r['true_age_band'] or '-'}",
                  r["defenses"] + (f" (eps {r['dp_epsilon']:.3g})" if r.get("dp_epsilon") is not None else ""))
    out.print(t)
    # Which defenses hide a single user's update from this server, and which only look like they do.
    for d, sees in sorted({(r["defenses"], r["server_sees"]) for r in rows}):
        out.print(f"defenses {d}: {sees}")


def _summary_lines(summary: list[dict[str, Any]]) -> None:
    """Per round and method, both evaluators with 95 % intervals over users; a disagreement is flagged."""
    from fl_sim.core.scoring import EVALUATORS
    from fl_sim.core.fmt import format_ci as ci

    for e in summary:
        if not e["finished"]:
            out.print(f"round {e['round']} {e['method']}: nothing scored ({e['no_signal']} no-signal of {e['attacks']})")
            continue
        evs = "; ".join(f"{ev} re-id {ci(e[f'{ev}_reid_top1'], e[f'{ev}_reid_top1_ci'])}" for ev in EVALUATORS
                        if e.get(f"{ev}_reid_top1") is not None)
        flag = "  ⚠ the evaluators disagree beyond their intervals (headline: the lower)" if e["evaluators_disagree"] else ""
        out.print(f"round {e['round']} {e['method']}: {evs or 'aggregate'}; identity gain "
                  f"{ci(e['identity_gain'], e['identity_gain_ci'], 3)}{flag}")


# -- config ------------------------------------------------------------------------------
@config_app.command("show")
def config_show(config: Optional[Path] = CONFIG, set_: Optional[list[str]] = typer.Option(None, "--set"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective config with every key documented."""
    from fl_sim.core.config import load_config, to_dict, to_toml

    cfg = load_config(config, set_ or [])
    if as_json:
        _json(to_dict(cfg))
    else:
        sys.stdout.write(to_toml(cfg) + "\n")


# -- data --------------------------------------------------------------------------------
@data_app.command("info")
def data_info(dataset: str = typer.Argument("synthfaces"), size: int = typer.Option(32, "--size"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts and the evaluator's sanity figures on a dataset at a given size."""
    from fl_sim.core.data.info import dataset_info

    info = dataset_info(dataset, size)
    if as_json:
        _json(info)
        return
    t = Table(title=f"{dataset} at {size}x{size}")
    t.add_column("figure")
    t.add_column("value")
    for k, v in info.items():
        t.add_row(k, _fmt(v) if isinstance(v, float) else str(v))
    out.print(t)


@data_app.command("sheet")
def data_sheet(dataset: str = typer.Argument("synthfaces"), out_path: Path = typer.Option(
        Path("docs/synthfaces_contact_sheet.png"), "--out"), users: int = typer.Option(10, "--users"),
        photos: int = typer.Option(8, "--photos")) -> None:
    """A contact sheet PNG: users x photos, labelled with their attributes."""
    from fl_sim.core.data.info import contact_sheet

    out.print(f"wrote {contact_sheet(dataset, out_path, users, photos)}")


@data_app.command("synth")
def data_synth(preset: str = typer.Option("embedded", "--preset", help="embedded (synthfaces) | shifted (synthshift)"),
               out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the preset's assets)"),
               work_dir: Path = typer.Option(Path(".cache/synth-work"), "--work-dir", help="resumable shards"),
               seed: Optional[int] = typer.Option(None, "--seed", help="default: the preset's"),
               users: Optional[int] = typer.Option(None, "--users", help="default: the preset's"),
               photos_per_user: Optional[int] = typer.Option(None, "--photos-per-user", help="default: the preset's"),
               prior_identities: Optional[int] = typer.Option(None, "--prior-identities", help="default: the preset's"),
               photos_per_prior_identity: Optional[int] = typer.Option(
                   None, "--photos-per-prior-identity", help="default: the preset's")) -> None:
    """Generate synthetic identities (MobileStyleGAN); normal users never need this."""
    import dataclasses

    from fl_sim.core.data.synth import PRESETS, asset_dir, generate

    if preset not in PRESETS:
        raise FlSimError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    given = {"seed": seed, "users": users, "photos_per_user": photos_per_user, "prior_identities": prior_identities,
             "photos_per_prior_identity": photos_per_prior_identity}
    spec = dataclasses.replace(PRESETS[preset], **{k: v for k, v in given.items() if v is not None})
    target = out_dir or asset_dir(spec)

    def progress(split: str, i: int, n: int) -> None:
        if i % 25 == 0 or i == n:
            err.print(f"{split}: {i}/{n} identities")

    manifest = generate(spec, target, work_dir, progress)
    out.print(f"wrote {target} ({manifest['counts']}) in {manifest['seconds']:.0f}s")


# -- prior -------------------------------------------------------------------------------
PRIOR = typer.Option("faces32", "--prior", help="faces32 (embedded) | a diffusers folder | a hub id")


def _load_prior(spec: str):  # noqa: ANN202 - attacks.priors imported lazily (torch start-up)
    from attacks.priors import PriorError, load_prior

    try:
        return load_prior(spec)
    except PriorError as exc:
        raise FlSimError(str(exc)) from None


@prior_app.command("train")
def prior_train(data: str = typer.Option("synthfaces:prior", "--data"), size: int = typer.Option(32, "--size"),
                steps: int = typer.Option(20000, "--steps"), batch_size: int = typer.Option(32, "--batch-size"),
                out_dir: Path = typer.Option(Path(".cache/prior-train"), "--out"),
                resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
                checkpoint_every: int = typer.Option(1000, "--checkpoint-every"),
                max_minutes: float = typer.Option(0.0, "--max-minutes", help="stop (and checkpoint) after this long")) -> None:
    """Train a DDPM prior on a prior split (never the users), resumable; writes diffusers format."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from fl_sim.experiments.prior_train import PriorTrainSpec, train_prior

    spec = PriorTrainSpec(data=data, size=size, steps=steps, batch_size=batch_size, checkpoint_every=checkpoint_every)
    with Progress(TextColumn("prior"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
                  TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))

        def progress(step: int, loss: float, seconds: float) -> None:
            bar.update(task, completed=step, loss=loss)

        info = train_prior(spec, out_dir, resume=resume, progress=progress,
                           max_seconds=max_minutes * 60 if max_minutes > 0 else None)
    out.print(f"prior at {out_dir}: {info['steps']} steps, {info['seconds'] / 60:.1f} min; samples {out_dir / 'samples.png'}")


@prior_app.command("sample")
def prior_sample(prior: str = PRIOR, n: int = typer.Option(64, "--n"), steps: int = typer.Option(50, "--steps"),
                 seed: int = typer.Option(0, "--seed"), out_path: Path = typer.Option(Path("prior_samples.png"), "--out")) -> None:
    """Write a grid of samples from a prior."""
    import torch

    from fl_sim.experiments.prior_train import save_grid

    p = _load_prior(prior)
    save_grid(p.sample(n, steps=steps, generator=torch.Generator().manual_seed(seed)), out_path)
    out.print(f"wrote {out_path}")


@prior_app.command("eval")
def prior_eval(prior: str = PRIOR, images: int = typer.Option(100, "--images"),
               as_json: bool = typer.Option(False, "--json"), memo: bool = typer.Option(True, "--memorization/--no-memorization")) -> None:
    """The prior as a denoiser on held-out user photos vs a tuned Gaussian filter, plus memorisation."""
    import time

    import numpy as np

    from fl_sim.core.data.base import to_tensor
    from fl_sim.core.data.synthfaces import open_synthfaces
    from fl_sim.experiments.prior_eval import evaluate_prior, heldout_images, memorization

    t0 = time.time()
    p = _load_prior(prior)
    load_s = time.time() - t0
    res = evaluate_prior(p, heldout_images(p.size, images))
    res["load_seconds"] = round(load_s, 2)
    if memo:
        ds = open_synthfaces("prior")
        train = to_tensor(np.stack([ds.photos_uint8(u.user)[0] for u in ds.users()[:2000]]), p.size)
        res["memorization"] = memorization(p, train)
    res["prior"] = prior
    if as_json:
        _json(res)
        return
    t = Table(title=f"prior {prior} as a denoiser ({res['images']} held-out user photos)")
    for c in ("sigma", "t", "noisy", "gaussian (tuned)", "prior x0", "prior DDIM"):
        t.add_column(c)
    for r in res["levels"]:
        t.add_row(str(r["sigma"]), str(r.get("t")), _fmt(r["noisy_psnr"], 2), _fmt(r["baseline_psnr"], 2),
                  _fmt(r.get("prior_psnr"), 2), _fmt(r.get("prior_ddim_psnr"), 2))
    out.print(t)
    if memo:
        out.print(f"memorisation: {res['memorization']}")


# -- bench -------------------------------------------------------------------------------
@bench_app.command("federation")
def bench_federation(as_json: bool = typer.Option(False, "--json"),
                     rounds: Optional[int] = typer.Option(None, "--rounds", help="default 6 (16 with --attacks)"),
                     set_: Optional[list[str]] = typer.Option(None, "--set"),
                     attacks: bool = typer.Option(False, "--attacks", help="attacks on (every user, every round) vs off"),
                     runs_dir: Path = typer.Option(Path(".cache/bench-runs"), "--runs-dir")) -> None:
    """Round wall time of the Flower/Ray simulation vs a plain loop (or, with --attacks, attacks on vs off)."""
    from fl_sim.experiments.bench import bench_federation as bench
    from fl_sim.experiments.bench import bench_federation_attacks
    from fl_sim.core.config import load_config

    rounds = rounds or (16 if attacks else 6)
    load_config(None, [*(set_ or []), f"rounds={rounds}"])  # config errors are one line, before anything runs
    res = (bench_federation_attacks if attacks else bench)(set_ or [], rounds=rounds, runs_dir=runs_dir)
    if as_json:
        _json(res)
    else:
        for k, v in res.items():
            out.print(f"{k}: {_fmt(v) if isinstance(v, float) else v}")


@bench_app.command("attack")
def bench_attack_cmd(users: int = typer.Option(20, "--users"), batch_sizes: str = typer.Option("32", "--batch-sizes"),
                     methods: str = typer.Option("ig,diffusion", "--methods"),
                     rounds: str = typer.Option("0", "--round", help="round(s) of the default federation to attack, e.g. 5 or 0,5"),
                     protocol: str = typer.Option("fedsgd", "--protocol"), prior: str = PRIOR,
                     iterations: Optional[int] = typer.Option(None, "--iterations"),
                     seeds: str = typer.Option("0", "--seeds", help="seeds to pool (model training and attack), e.g. 0,1"),
                     data: str = typer.Option("synthfaces", "--data", help="the users' dataset spec (e.g. synthshift)"),
                     nulls: bool = typer.Option(True, "--nulls/--no-nulls", help="also run the null controls (zero "
                                                "update, an outsider's update): they must score at chance"),
                     figure: Optional[Path] = typer.Option(None, "--figure", help="PNG: per user 4 photos | each method, per round"),
                     doc: Optional[Path] = typer.Option(None, "--doc", help="write the tables into this markdown file "
                                                        "(between <!-- bench-attack:PROTOCOL:begin/end --> markers)"),
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """Attack every user's update with each method, same model and seeds; score with the face evaluators."""
    from attacks.methods import ATTACKS
    from fl_sim.experiments.attack_bench import attack_figure, attack_markdown, bench_attack
    from fl_sim.experiments.bench import write_doc_section

    wanted = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in ATTACKS]
    if unknown or not wanted:
        raise FlSimError(f"--methods: unknown attack(s) {', '.join(unknown) or '(none given)'} "
                         f"(known: {', '.join(sorted(ATTACKS))})")
    if protocol not in ("fedsgd", "fedavg"):
        raise FlSimError(f"--protocol: {protocol!r} is not fedsgd or fedavg")
    sizes, rnds = _int_list("--batch-sizes", batch_sizes, 1), _int_list("--round", rounds, 0)
    if users < 2:
        raise FlSimError(f"--users: re-identification needs at least 2 users, got {users}")
    seed_list = _int_list("--seeds", seeds, 0)
    from fl_sim.core.data import open_dataset

    n_ids = len(open_dataset(data).users())  # a bad spec is one line here, before any training
    if n_ids < users:
        raise FlSimError(f"--users: dataset {data} has {n_ids} identities, {users} requested")
    res = bench_attack(users=users, batch_sizes=sizes, methods=wanted, rounds=rnds, protocol=protocol, prior_spec=prior,
                       iterations=iterations, seeds=seed_list, dataset=data, nulls=nulls,
                       progress=lambda m: err.print(m))
    if figure:
        err.print(f"figure: {attack_figure(res, figure)}")
    if doc:
        key = f"bench-attack:{protocol}" + ("" if data == "synthfaces" else f":{data}")
        write_doc_section(doc, key, attack_markdown(res))
        err.print(f"tables written to {doc}")
    if as_json:
        _json({k: v for k, v in res.items() if k not in ("images", "photos")})
        return
    t = Table(title=f"attack bench: {protocol}, {len(res['users'])} users of {res['dataset']}, seeds {seeds} "
                    f"(95 % intervals over users; re-id by chance {res['chance_reid_top1']:.2f})")
    for c in ("round", "method", "evaluator", "batch", "re-id top-1", "mean rank", "identity gain", "null re-id",
              "gender acc", "s/user"):
        t.add_column(c)
    from fl_sim.core.fmt import format_ci as ci

    for r in res["rows"]:
        t.add_row(str(r["round"]), r["method"], r["evaluator"], str(r["batch_size"]), ci(r["reid_top1"], r["reid_top1_ci"]),
                  ci(r["mean_rank"], r["mean_rank_ci"], 1), ci(r["identity_gain"], r["identity_gain_ci"], 3),
                  ci(r.get("null_reid_top1"), r.get("null_reid_top1_ci")), ci(r["gender_acc"], r["gender_acc_ci"]),
                  _fmt(r["seconds_per_user"], 2))
    out.print(t)
    for c in res["comparisons"]:
        verdict = f"{c['lead']} leads" if c["lead"] else "no difference called"
        out.print(f"round {c['round']} batch {c['batch_size']} {c['evaluator']:>5} {c['metric']:<13} {c['a']} - {c['b']}: "
                  f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]  {verdict}")
    for a in res["agreement"]:
        if a.get("reid_top1_disagree"):
            out.print(f"round {a['round']} {a['method']}: the evaluators disagree beyond their intervals; headline "
                      f"re-id is the lower ({a['reid_top1_evaluator']}) {a['reid_top1']:.2f}")


def _int_list(option: str, text: str, minimum: int) -> list[int]:
    """'8,32,64' -> [8, 32, 64], each >= minimum; a one-line error naming the option otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FlSimError(f"{option}: expected integers like 8,32,64, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise FlSimError(f"{option}: expected integers >= {minimum}, got {text!r}")
    return values


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    try:
        app(standalone_mode=True)
    except FlSimError as exc:
        err.print(f"fl-sim: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
