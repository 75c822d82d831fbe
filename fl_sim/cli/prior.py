"""`fl-sim prior train | sample | eval`: diffusion priors."""

from __future__ import annotations

from pathlib import Path

import typer

from fl_sim.cli.common import PRIOR, err, int_list, out, print_all, print_json
from fl_sim.core.errors import FlSimError

app = typer.Typer(no_args_is_help=True, help="Diffusion priors: train, sample, evaluate.")


@app.command("train")
def prior_train(data: str = typer.Option("synthfaces:prior", "--data"), size: int = typer.Option(32, "--size"),
                steps: int = typer.Option(20000, "--steps"), batch_size: int = typer.Option(32, "--batch-size"),
                out_dir: Path = typer.Option(Path(".cache/prior-train"), "--out"),
                resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
                checkpoint_every: int = typer.Option(1000, "--checkpoint-every"),
                channels: str = typer.Option("32,64,128", "--channels", help="UNet widths per level (faces64: 32,64,96,128)"),
                device: str = typer.Option("cpu", "--device", help="cpu | cuda (the random draws stay on the CPU)"),
                max_minutes: float = typer.Option(0.0, "--max-minutes", help="stop (and checkpoint) after this long")) -> None:
    """Train a DDPM prior on a prior split (never the users), resumable; writes diffusers format."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from fl_sim.experiments.prior_train import PriorTrainSpec, train_prior

    widths = tuple(int_list("--channels", channels, 1))
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise FlSimError(f"--device: expected cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise FlSimError(f"--device {device}: torch sees no CUDA device here")
    spec = PriorTrainSpec(data=data, size=size, steps=steps, batch_size=batch_size, checkpoint_every=checkpoint_every,
                          channels=widths)
    with Progress(TextColumn("prior"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
                  TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))

        def progress(step: int, loss: float, seconds: float) -> None:
            bar.update(task, completed=step, loss=loss)

        info = train_prior(spec, out_dir, resume=resume, progress=progress, device=device,
                           max_seconds=max_minutes * 60 if max_minutes > 0 else None)
    out.print(f"prior at {out_dir}: {info['steps']} steps, {info['seconds'] / 60:.1f} min; samples {out_dir / 'samples.png'}")


@app.command("sample")
def prior_sample(prior: str = PRIOR, n: int = typer.Option(64, "--n"), steps: int = typer.Option(50, "--steps"),
                 seed: int = typer.Option(0, "--seed"), out_path: Path = typer.Option(Path("prior_samples.png"), "--out")) -> None:
    """Write a grid of samples from a prior."""
    from fl_sim.experiments.prior_eval import sample_grid

    out.print(f"wrote {sample_grid(prior, n, steps, seed, out_path)}")


@app.command("eval")
def prior_eval(prior: str = PRIOR, images: int = typer.Option(100, "--images"),
               as_json: bool = typer.Option(False, "--json"), memo: bool = typer.Option(True, "--memorization/--no-memorization")) -> None:
    """The prior as a denoiser on held-out user photos vs a tuned Gaussian filter, plus memorisation."""
    from fl_sim.experiments.bench_reports import prior_eval_report
    from fl_sim.experiments.prior_eval import prior_report

    from fl_sim.experiments.progress import Bar

    with Bar(err, "prior eval") as bar:
        res = prior_report(prior, images, memo, step=bar.step)
    if as_json:
        print_json(res)
        return
    print_all(prior_eval_report(res, prior, memo))
