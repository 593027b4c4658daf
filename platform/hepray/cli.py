"""The `hepray` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deep learning on detector data in ROOT files, on Ray.")
console = Console(stderr=True)


def _fail(error: BaseException) -> None:
    console.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(2)


def data_error_in(error: BaseException):
    """The hepray error inside an exception Ray wrapped (task, dataset, training failures)."""
    from hepray.data.expr import ExpressionError
    from hepray.data.root_source import DataError

    seen = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (DataError, ExpressionError)):
            return current
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
        stack += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
    return None


@app.command()
def run(
    job_file: Path = typer.Argument(..., help="job YAML"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/<job name>)"),
    set_: list[str] = typer.Option([], "--set", help="override a job key: --set train.epochs=3"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in --out"),
) -> None:
    """Train, evaluate and export the model of a job."""
    from hepray.spec import SpecError, load_job

    try:
        job = load_job(job_file, set_)
    except SpecError as error:
        _fail(error)
    from hepray.train.trainer import run_job

    out_dir = out or Path("runs") / job.name
    try:
        metrics = run_job(job, out_dir, resume=resume)
    except Exception as error:
        cause = data_error_in(error)
        if cause is None:
            raise
        _fail(cause)
    summary = {k: v for k, v in metrics.items() if "@" not in k and not k.startswith("test_confusion")}
    console.print_json(json.dumps(summary, default=str))
    console.print(f"[green]wrote[/] {out_dir}/metrics.json, plots/, model.onnx")


@app.command("make-data")
def make_data(
    kind: str = typer.Argument(..., help="sample kind, e.g. electron_id"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    events: int = typer.Option(4000, "--events", help="events per class or sample"),
    seed: int = typer.Option(1, "--seed"),
    fmt: str = typer.Option("ttree", "--format", help="ttree or rntuple"),
) -> None:
    """Write sample ROOT files shaped like a study's data."""
    from hepray.data.samples import generate

    try:
        paths = generate(kind, out, events, seed, fmt)
    except ValueError as error:
        _fail(error)
    console.print(f"wrote {len(paths)} files to {out}")


@app.command()
def validate(job_file: Path, set_: list[str] = typer.Option([], "--set")) -> None:
    """Check a job file without running it; print the resolved job."""
    import yaml

    from hepray.spec import SpecError, load_job

    try:
        job = load_job(job_file, set_)
    except SpecError as error:
        _fail(error)
    typer.echo(yaml.safe_dump(job.model_dump(mode="json", by_alias=True), sort_keys=False))


if __name__ == "__main__":
    app()
