"""`fl-sim data info | sheet | synth`: dataset figures, a contact sheet, synthetic identities."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fl_sim.cli.common import err, out, print_json
from fl_sim.core.errors import FlSimError

app = typer.Typer(no_args_is_help=True, help="Datasets: embedded identities and loaders.")


@app.command("info")
def data_info(dataset: str = typer.Argument("synthfaces"), size: int = typer.Option(32, "--size"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts and the evaluator's sanity figures on a dataset at a given size."""
    from fl_sim.core.data.info import dataset_info
    from fl_sim.experiments.bench_reports import figure_table

    info = dataset_info(dataset, size)
    if as_json:
        print_json(info)
        return
    out.print(figure_table(f"{dataset} at {size}x{size}", info))


@app.command("sheet")
def data_sheet(dataset: str = typer.Argument("synthfaces"), out_path: Path = typer.Option(
        Path("docs/synthfaces_contact_sheet.png"), "--out"), users: int = typer.Option(10, "--users"),
        photos: int = typer.Option(8, "--photos")) -> None:
    """A contact sheet PNG: users x photos, labelled with their attributes."""
    from fl_sim.core.data.info import contact_sheet

    out.print(f"wrote {contact_sheet(dataset, out_path, users, photos)}")


@app.command("synth")
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
