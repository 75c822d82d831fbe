"""`fl-sim bench ...`: federation, deploy, attack, adversary, web, scale; numbers go to docs/BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fl_sim.cli.common import PRIOR_AUTO, err, int_list, out, print_all, print_json
from fl_sim.core.errors import FlSimError

app = typer.Typer(no_args_is_help=True, help="Benchmarks (numbers go to docs/BENCHMARKS.md).")


def _methods_and_protocol(methods: str, protocol: str) -> list[str]:
    """--methods as a list of registered attacks and --protocol checked (one line naming the option otherwise)."""
    from attacks.methods import ATTACKS

    wanted = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in ATTACKS]
    if unknown or not wanted:
        raise FlSimError(f"--methods: unknown attack(s) {', '.join(unknown) or '(none given)'} "
                         f"(known: {', '.join(sorted(ATTACKS))})")
    if protocol not in ("fedsgd", "fedavg"):
        raise FlSimError(f"--protocol: {protocol!r} is not fedsgd or fedavg")
    return wanted


@app.command("federation")
def bench_federation(as_json: bool = typer.Option(False, "--json"),
                     rounds: Optional[int] = typer.Option(None, "--rounds", help="default 6 (16 with --attacks)"),
                     set_: Optional[list[str]] = typer.Option(None, "--set"),
                     attacks: bool = typer.Option(False, "--attacks", help="attacks on (every user, every round) vs off"),
                     runs_dir: Path = typer.Option(Path(".cache/bench-runs"), "--runs-dir")) -> None:
    """Round wall time of the Flower/Ray simulation vs a plain loop (or, with --attacks, attacks on vs off)."""
    from fl_sim.core.config import load_config
    from fl_sim.experiments.bench import bench_federation as bench
    from fl_sim.experiments.bench import bench_federation_attacks
    from fl_sim.experiments.bench_reports import figure_lines

    rounds = rounds or (16 if attacks else 6)
    load_config(None, [*(set_ or []), f"rounds={rounds}"])  # config errors are one line, before anything runs
    from fl_sim.experiments.progress import Bar

    with Bar(err, "rounds") as bar:
        res = (bench_federation_attacks if attacks else bench)(set_ or [], rounds=rounds, runs_dir=runs_dir, step=bar.step)
    if as_json:
        print_json(res)
    else:
        print_all(figure_lines(res))


@app.command("deploy")
def bench_deploy_cmd(as_json: bool = typer.Option(False, "--json"),
                     rounds: int = typer.Option(4, "--rounds", min=2),
                     set_: Optional[list[str]] = typer.Option(None, "--set"),
                     runs_dir: Path = typer.Option(Path(".cache/bench-runs"), "--runs-dir")) -> None:
    """Round wall time of the local deployment (Flower's Deployment Engine) vs the simulation, same config."""
    from fl_sim.core.config import load_config
    from fl_sim.experiments.bench import bench_deploy
    from fl_sim.experiments.bench_reports import figure_lines
    from fl_sim.experiments.progress import Bar

    load_config(None, [*(set_ or []), f"rounds={rounds}"])  # config errors are one line, before anything runs
    with Bar(err, "rounds") as bar:
        res = bench_deploy(set_ or [], rounds=rounds, runs_dir=runs_dir, step=bar.step)
    if as_json:
        print_json(res)
    else:
        print_all(figure_lines(res))


@app.command("attack")
def bench_attack_cmd(users: int = typer.Option(20, "--users"), batch_sizes: str = typer.Option("32", "--batch-sizes"),
                     methods: str = typer.Option("ig,diffusion", "--methods"),
                     rounds: str = typer.Option("0", "--round", help="round(s) of the default federation to attack, e.g. 5 or 0,5"),
                     protocol: str = typer.Option("fedsgd", "--protocol"), prior: str = PRIOR_AUTO,
                     size: int = typer.Option(32, "--size", help="image side (data.image_size): 32 or 64; the model "
                                              "follows it, and --prior auto picks the embedded prior of that size"),
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
    from fl_sim.core.data import open_dataset
    from fl_sim.experiments.attack_bench import attack_figure, attack_markdown, bench_attack
    from fl_sim.experiments.bench import write_doc_section
    from fl_sim.experiments.bench_reports import attack_bench_report

    wanted = _methods_and_protocol(methods, protocol)
    sizes, rnds = int_list("--batch-sizes", batch_sizes, 1), int_list("--round", rounds, 0)
    if users < 2:
        raise FlSimError(f"--users: re-identification needs at least 2 users, got {users}")
    seed_list = int_list("--seeds", seeds, 0)
    n_ids = len(open_dataset(data).users())  # a bad spec is one line here, before any training
    if n_ids < users:
        raise FlSimError(f"--users: dataset {data} has {n_ids} identities, {users} requested")
    from fl_sim.experiments.progress import Bar

    with Bar(err, "attacks") as bar:
        res = bench_attack(users=users, batch_sizes=sizes, methods=wanted, rounds=rnds, protocol=protocol,
                           prior_spec=prior, iterations=iterations, seeds=seed_list, dataset=data, nulls=nulls,
                           size=size, progress=bar.say, step=bar.step)
    if figure:
        err.print(f"figure: {attack_figure(res, figure)}")
    if doc:
        key = f"bench-attack:{protocol}" + ("" if data == "synthfaces" else f":{data}") + ("" if size == 32 else f":{size}")
        write_doc_section(doc, key, attack_markdown(res))
        err.print(f"tables written to {doc}")
    if as_json:
        print_json({k: v for k, v in res.items() if k not in ("images", "photos")})
        return
    print_all(attack_bench_report(res, protocol, seeds))


@app.command("adversary")
def bench_adversary_cmd(users: int = typer.Option(20, "--users", min=8),
                        batch_sizes: str = typer.Option("32", "--batch-sizes", help="photos per user = the FedSGD "
                                                        "batch (the embedded faces hold 80 per identity)"),
                        protocol: str = typer.Option("fedsgd", "--protocol"),
                        warmup: int = typer.Option(4, "--warmup", min=0, help="honest rounds before the attacked ones"),
                        targets: Optional[int] = typer.Option(None, "--targets", min=1, help="inconsistency: users "
                                                              "targeted, one per round (the curious aggregate attack "
                                                              "runs in the same rounds; default: 10, at most --users)"),
                        methods: str = typer.Option("ig,diffusion", "--methods", help="the user-level attacks (the "
                                                    "curious server's, and on inconsistency's recovered update)"),
                        iterations: int = typer.Option(400, "--iterations", min=1),
                        dp_noise: float = typer.Option(0.5, "--dp-noise", help="z of the DP-SGD cells"),
                        wait_s: float = typer.Option(0.5, "--wait-s", min=0.0, help="model_check's wait for the "
                                                     "round's digests in the refuse cells"),
                        clean_noise: float = typer.Option(0.5, "--clean-noise", min=0.0, help="imprint: also clean "
                                                          "the mixed bins with the prior at this noise std and "
                                                          "score both (0: off)"),
                        cells: str = typer.Option("", "--cells", help="tactic/defense pairs to run, e.g. "
                                                  "imprint/none,inconsistency/secagg (empty: the whole grid)"),
                        seed: int = typer.Option(0, "--seed"),
                        set_: Optional[list[str]] = typer.Option(None, "--set", help="extra config for every cell"),
                        runs_dir: Path = typer.Option(Path(".cache/bench-runs"), "--runs-dir"),
                        figure: Optional[Path] = typer.Option(None, "--figure", help="PNG: per user, photos | curious "
                                                              "reconstructions | malicious recoveries"),
                        doc: Optional[Path] = typer.Option(None, "--doc", help="write the table into this markdown "
                                                           "file (between <!-- bench-adversary:PROTOCOL:bSIZES:begin/end"
                                                           " -->)"),
                        from_: Optional[Path] = typer.Option(None, "--from", help="re-render a saved result "
                                                             "(RUNS_DIR/adversary-*.json) instead of running"),
                        as_json: bool = typer.Option(False, "--json")) -> None:
    """A malicious server's tactics (imprint, inconsistency) beside the curious server, per client defense (none,
    DP-SGD, SecAgg+, model_check), each cell a real federation: leakage, detection and cost."""
    from fl_sim.experiments.adversary_bench import CELLS, Plan, bench_adversary, check_plan
    from fl_sim.experiments.progress import Bar

    if from_ is not None:
        res = _saved(from_)
        _adversary_outputs(res, figure, doc, as_json)
        return
    wanted = tuple(_methods_and_protocol(methods, protocol))
    chosen = CELLS
    if cells.strip():
        pairs = [tuple(c.strip().split("/", 1)) for c in cells.split(",") if c.strip()]
        bad = [c for c in pairs if c not in CELLS]
        if bad:
            raise FlSimError(f"--cells: {', '.join('/'.join(c) for c in bad)} not in the grid "
                             f"({', '.join(t + '/' + d for t, d in CELLS)})")
        chosen = tuple(p for p in CELLS if p in pairs)
    plan = Plan(users=users, batch_sizes=tuple(int_list("--batch-sizes", batch_sizes, 1)), protocol=protocol,
                warmup=warmup, targets=targets if targets is not None else min(10, users), methods=wanted, iterations=iterations, dp_noise=dp_noise,
                wait_s=wait_s, clean_noise=clean_noise, seed=seed, overrides=tuple(set_ or []))
    check_plan(plan)
    with Bar(err, "cells") as bar:
        total = len(chosen) * len(plan.batch_sizes)
        done = [0]

        def say(what: str) -> None:
            bar.describe(what)
            bar.step(done[0], total)
            done[0] += 1

        res = bench_adversary(plan, runs_dir, say, chosen)
        bar.step(total, total)
    err.print(f"result saved: {res['saved']}")
    _adversary_outputs(res, figure, doc, as_json)


def _saved(path: Path) -> dict[str, Any]:
    """A saved adversary bench result (one line naming --from when it is not one)."""
    import json

    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FlSimError(f"--from: cannot read {path}: {exc}") from None
    if not isinstance(res, dict) or not isinstance(res.get("rows"), list) or "config" not in res:
        raise FlSimError(f"--from: {path} is not a saved `fl-sim bench adversary` result")
    return res


def _adversary_outputs(res: dict[str, Any], figure: Optional[Path], doc: Optional[Path], as_json: bool) -> None:
    from fl_sim.experiments.adversary_report import adversary_figure, adversary_lines, adversary_markdown, doc_key
    from fl_sim.experiments.bench import write_doc_section

    if figure:
        err.print(f"figure: {adversary_figure(res, figure)}")
    if doc:
        write_doc_section(doc, doc_key(res), adversary_markdown(res))
        err.print(f"table written to {doc}")
    if as_json:
        print_json(res)
        return
    print_all(adversary_lines(res))


@app.command("web")
def bench_web_cmd(users: int = typer.Option(100, "--users", min=1, max=5000),
                  rounds: int = typer.Option(10, "--rounds", min=1, max=200, help="attacked rounds"),
                  methods: str = typer.Option("ig,diffusion", "--methods"),
                  repeats: int = typer.Option(5, "--repeats", min=1, max=100),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """The web view on a users × attacked-rounds store: seconds per page (cold and median), over real HTTP."""
    from fl_sim.web.bench import bench_web

    wanted = _methods_and_protocol(methods, "fedavg")
    res = bench_web(users, rounds, tuple(wanted), repeats)
    if as_json:
        print_json(res)
        return
    out.print(f"{res['users']} users × {res['attacked_rounds']} attacked rounds × {len(res['methods'])} methods = "
              f"{res['attacks']} attacks; store {res['store_mb']:.1f} MB ({res['note']})", markup=False)
    for r in res["rows"]:
        out.print(f"  {r['page']:<20} cold {r['cold_s']:.3f} s   median {r['median_s']:.3f} s   "
                  f"max {r['max_s']:.3f} s   {r['bytes'] / 1024:.0f} KB", markup=False)


@app.command("scale")
def bench_scale_cmd(users: str = typer.Option("10,100,1000", "--users", help="users in the federation"),
                    sampled: str = typer.Option("10,50,100", "--sampled", help="clients sampled per round"),
                    rounds: int = typer.Option(5, "--rounds", min=2, max=100),
                    attacks: bool = typer.Option(True, "--attacks/--no-attacks",
                                                 help="the curious server on a sample of 10 users"),
                    big_store: bool = typer.Option(True, "--big-store/--no-big-store",
                                                   help="also time the reads on a 100,000-update store"),
                    runs_dir: Path = typer.Option(Path(".cache/bench-runs"), "--runs-dir"),
                    as_json: bool = typer.Option(False, "--json")) -> None:
    """The cost curve: round time, peak RSS of the process tree, store size, read commands, attack throughput."""
    import tempfile

    from fl_sim.experiments.scale_bench import big_store_reads, bench_scale

    user_list, sampled_list = int_list("--users", users, 2), int_list("--sampled", sampled, 1)
    if max(user_list) > 1000:
        raise FlSimError(f"--users: at most 1000 (the split embedded identities hold 1,000), got {users!r}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    doc = bench_scale(user_list, sampled_list, rounds, runs_dir, say=lambda s: err.print(s, markup=False),
                      attacks=attacks)
    if big_store:
        with tempfile.TemporaryDirectory(prefix="fl-sim-big-store-") as tmp:
            doc["big_store"] = big_store_reads(Path(tmp))
    if as_json:
        print_json(doc)
        return
    for r in doc["rows"]:
        out.print(f"{r['users']:>5} users {r['sampled']:>4} sampled: round {r['round_s']:.2f} s (first "
                  f"{r['first_round_s']:.1f} s), peak RSS {r['peak_rss_gb']:.2f} GB (PSS {r['peak_pss_gb']:.2f} GB), store {r['store_mb']:.2f} MB, "
                  f"runs {r['runs_s']:.2f} s, inspect {r['inspect_s']:.2f} s, export {r['export_s']:.2f} s, "
                  f"attacks/min {r['attacks_per_min'] or 0:.1f}", markup=False)
    if "big_store" in doc:
        b = doc["big_store"]
        out.print(f"store of {b['update_rows']} updates ({b['store_mb']:.1f} MB): runs {b['runs_s']:.2f} s, inspect "
                  f"{b['inspect_s']:.2f} s ({b['inspect_in_process_s']:.2f} s in process), export {b['export_s']:.2f} s; "
                  f"python + torch import alone {b['python_start_s']:.2f} s", markup=False)
