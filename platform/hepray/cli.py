"""The `hepray` command."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Deep learning on detector data in ROOT files, on Ray."
)
console = Console(stderr=True)


def _fail(error: BaseException) -> None:
    """`error: <message>` on stderr and exit code 2. Printed as it is: not wrapped at the terminal's
    width, and brackets or colons in paths and branch names are not taken for rich markup or emoji."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True, emoji=False)
    raise typer.Exit(2)


# Ray Data appends this to the message of an exception raised in a read or map task.
RAY_RETRY_ADVICE = re.compile(r"\n\s*Failed to [^\n]* after \d+/\d+ attempts \(total backoff[^\n]*[\s\S]*$")
ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*m")


def user_error_kinds() -> tuple[type[Exception], ...]:
    """hepray's errors about what the user gave it: data, expressions, model files, a job that
    does not fit the cluster (SpecError), a run that cannot go on (no data arriving, NaN loss), a
    Ray that did not start or cannot be joined."""
    from hepray.app.session import RayStartError
    from hepray.data.rootio import DataError
    from hepray.evaluate.inference import ModelFileError
    from hepray.expr import ExpressionError
    from hepray.spec import SpecError
    from hepray.train.watchdog import TrainingStopped

    return DataError, ExpressionError, ModelFileError, RayStartError, SpecError, TrainingStopped


def data_error_in(error: BaseException) -> Exception | None:
    """The hepray error (bad data, a bad expression, an unusable model file) inside an exception
    Ray wrapped, wherever it was raised: read task, split coordinator, training worker (Ray Train's
    WorkerGroupError keeps them in `worker_failures`), evaluation or predict actor. Returned anew,
    as hepray's class with hepray's message (Ray's retry advice cut off); found among the wrapped
    exception objects or, where Ray kept only their traceback text, in that text. None if none."""
    kinds = user_error_kinds()
    wrapped = list(_exceptions_within(error))
    for current in wrapped:
        kind = next((kind for kind in kinds if isinstance(current, kind)), None)
        # RayTaskError(DataError) is a DataError too, but its message is the remote traceback.
        if kind is not None and not type(current).__module__.startswith("ray."):
            return kind(_hepray_message(str(current)))
    for current in wrapped:
        text = ANSI_COLOR.sub("", str(current))
        for kind in kinds:
            found = re.search(rf"^[ \t]*{re.escape(kind.__module__ + '.' + kind.__qualname__)}: (.+)$", text, re.M)
            if found:
                return kind(_hepray_message(found.group(1)))
    return None


def _exceptions_within(error: BaseException, limit: int = 1000):
    """The exception and, breadth first, those it links to: causes, contexts, arguments and
    attributes (RayTaskError.cause, WorkerGroupError.worker_failures, ControllerError ...)."""
    seen: set[int] = set()
    queue = [error]
    while queue and len(seen) < limit:
        current = queue.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for item in [current.__cause__, current.__context__, *current.args, *getattr(current, "__dict__", {}).values()]:
            items = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else [item]
            queue += [inner for inner in items if isinstance(inner, BaseException)]


def _hepray_message(text: str) -> str:
    return RAY_RETRY_ADVICE.sub("", ANSI_COLOR.sub("", text)).strip()


class _UserErrorReports(logging.Filter):
    """Keeps Ray Data's console reports of a failure caused by a hepray user error off the
    terminal (a read task's DataError comes as two tracebacks and 'please open an issue on the Ray
    project'): the command prints it as one `error:` line. Ray Data's log file still has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        # The report without exc_info is logged while Ray handles the exception: sys.exc_info has it.
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return error is None or data_error_in(error) is None


def quiet_ray_about_user_errors() -> None:
    """Attach _UserErrorReports to Ray Data's console handlers in this process (idempotent)."""
    from hepray.app.session import ray_data_console_handlers

    for handler in ray_data_console_handlers():
        if not any(isinstance(f, _UserErrorReports) for f in handler.filters):
            handler.addFilter(_UserErrorReports())


@contextmanager
def _user_errors_as_one_line() -> Iterator[None]:
    """Around a command's Ray work: a hepray user error, wherever Ray wrapped it, ends the command
    as one `error:` line (Ray Data's console reports of it kept quiet); anything else propagates."""
    quiet_ray_about_user_errors()
    try:
        yield
    except Exception as error:
        cause = data_error_in(error)
        if cause is None:
            raise
        _fail(cause)


@app.command()
def run(
    job_file: Path = typer.Argument(..., help="job YAML"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default runs/<job name>)"),
    set_: list[str] = typer.Option([], "--set", help="override a job key: --set train.epochs=3"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in --out"),
) -> None:
    """Train, evaluate and export the model of a job."""
    from hepray.spec import SpecError, load_job

    try:
        job = load_job(job_file, set_)
    except SpecError as error:
        _fail(error)
    _preflight(job)
    from hepray.app.run import run_job

    out_dir = out or Path("runs") / job.name
    with _user_errors_as_one_line():
        metrics = run_job(job, out_dir, resume=resume)
    console.print_json(json.dumps(headline_metrics(metrics), default=str))
    console.print(f"[green]wrote[/] {out_dir}/metrics.json (all {len(metrics)} numbers), plots/, model.onnx")


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What a physicist checks first: the test split's and the baselines' numbers (per observer
    bin where the job has bins), the losses and the sizes; the rest stays in metrics.json."""
    shown = ("test_", "baseline_", "train_loss", "train_eval_loss", "val_loss", "best_epoch", "events_")
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith(shown) and not k.startswith("test_confusion") and "nonfinite" not in k
    }


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="output directory of `hepray run` (holds model.pt)"),
    files: list[str] = typer.Option(..., "--files", help="ROOT files or globs to score (repeatable)"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default RUN_DIR/predictions)"),
    fmt: str = typer.Option("root", "--format", help="root (a TTree 'predictions') or parquet"),
    concurrency: int | None = typer.Option(None, "--concurrency", help="model actors (default the job's num_workers)"),
    num_gpus: float | None = typer.Option(None, "--num-gpus", help="GPUs per actor, e.g. 0.25 (default from the job)"),
    engine: str = typer.Option("torch", "--engine", help="torch or onnx (RUN_DIR/model.onnx)"),
    batch_size: int = typer.Option(1024, "--batch-size", help="events per model call"),
    observers: str | None = typer.Option(
        None, "--observers", help="comma-separated branches to copy (default the job's; '' for none)"
    ),
    tree: str | None = typer.Option(None, "--tree", help="the tree to read (default the job's data.tree)"),
) -> None:
    """Score new ROOT files with a trained model: one friend-tree output per input file."""
    if fmt not in ("root", "parquet") or engine not in ("torch", "onnx"):
        _fail(ValueError(f"--format must be root or parquet, --engine torch or onnx (got {fmt}, {engine})"))
    from hepray.app.predict import predict_files

    chosen = None if observers is None else [name for name in observers.split(",") if name.strip()]
    with _user_errors_as_one_line():
        report = predict_files(run_dir, files, out, fmt, concurrency, num_gpus, engine, batch_size, chosen, tree)
    summary = {
        "events": report.events,
        "events_per_s": round(report.events / report.seconds),
        "events_skipped": report.events_skipped,
        "files_skipped": report.files_skipped,
        "outputs": len(report.outputs),
    }
    console.print_json(json.dumps(summary))
    console.print(f"[green]wrote[/] {len(report.outputs)} outputs and predict.json to {report.out_dir}")


@app.command("make-data")
def make_data(
    kind: str = typer.Argument(..., help="sample kind, e.g. electron_id"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    events: int = typer.Option(4000, "--events", help="events per class or sample"),
    seed: int = typer.Option(1, "--seed"),
    fmt: str = typer.Option("ttree", "--format", help="ttree or rntuple"),
) -> None:
    """Write sample ROOT files shaped like a study's data."""
    from hepray.samples import generate

    try:
        paths = generate(kind, out, events, seed, fmt)
    except ValueError as error:
        _fail(error)
    console.print(f"wrote {len(paths)} files to {out}")


@app.command()
def validate(
    job_file: Path,
    set_: list[str] = typer.Option([], "--set"),
    read: bool = typer.Option(
        False,
        "--read",
        help="also read and encode every event once on Ray, listing every unreadable range or bad event",
    ),
) -> None:
    """Check a job file and the files it reads (metadata only) without running it; print the
    plan (files, entries per class, read tasks, split sizes) as YAML comments, then the resolved job."""
    import yaml

    from hepray.spec import SpecError, load_job

    try:
        job = load_job(job_file, set_)
    except SpecError as error:
        _fail(error)
    report = _preflight(job)
    typer.echo("\n".join(f"# {line}" for line in report.plan()))
    typer.echo(yaml.safe_dump(job.model_dump(mode="json", by_alias=True), sort_keys=False))
    if read:
        _read_everything(job)


def _read_everything(job) -> None:
    """`validate --read`: what a run's reads would meet, all of it, before a long run meets the
    first. Each problem is one line; under data.on_error: fail they end in an `error:` line."""
    import time

    from rich.markup import escape

    from hepray.app.job_data import read_everything

    start = time.perf_counter()
    with _user_errors_as_one_line():
        examples, skips = read_everything(job)
    problems = skips["skipped"]
    kind = "warning" if job.data.on_error == "skip" else "problem"
    for line in problems:
        console.print(f"[yellow]{kind}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    count, events = f"{len(problems)} problem{'s' * (len(problems) != 1)}", f"{skips['events_skipped']:.0f} events"
    typer.echo(
        f"# read: {examples} examples in {time.perf_counter() - start:.0f} s; "
        + (f"{count} ({events} unread or skipped)" if problems else "no problems")
    )
    if problems and job.data.on_error == "fail":
        _fail(
            f"{count} in the data, listed above ({events}); a run (data.on_error: fail) "
            "stops at the first: mend or leave out those files, or set data.on_error: skip to train without them"
        )


def _preflight(job, absent_ok: bool = False, where: str = ""):
    """Before Ray starts: every file the job reads holds every branch it names (app.preflight,
    metadata only). Fails with one `error:` line (after `where`, the key that names the job);
    warnings (data.on_error: skip) go to stderr."""
    from rich.markup import escape

    from hepray.app.preflight import check_job
    from hepray.data.rootio import DataError
    from hepray.spec import SpecError

    try:
        report = check_job(job, absent_ok)
    except (DataError, SpecError) as error:
        _fail(SpecError(f"{where}: {error}") if where else error)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for group in report.groups + report.samples:
        for pattern in group.absent:
            console.print(
                f"note: {group.key}: {escape(pattern)} not found here, not checked", highlight=False, soft_wrap=True
            )
    return report


@app.command()
def tune(
    space_file: Path | None = typer.Argument(None, help="search YAML (tune_spaces/NAME.yaml)"),
    status: Path | None = typer.Option(
        None, "--status", help="print the trial table of the search in this directory (running or finished) and stop"
    ),
    out: Path | None = typer.Option(None, "--out", help="output directory (default runs/tune/<search name>)"),
    set_: list[str] = typer.Option([], "--set", help="override a search key: --set num_samples=4"),
    resume: bool = typer.Option(False, "--resume", help="continue the search in --out; finished trials are kept"),
    retrain_best: bool = typer.Option(False, "--retrain-best", help="then train the best job in full (OUT/best)"),
    report: bool = typer.Option(False, "--report", help="then train baseline and best and write docs/tune_<name>.md"),
    report_file: Path | None = typer.Option(None, "--report-file", help="write the --report here instead"),
) -> None:
    """Search a job's keys with Ray Tune + Optuna (TPE) + ASHA; write trials.csv, best_job.yaml, study.db."""
    from hepray.spec import SpecError
    from hepray.tune.space import load_search

    if status is not None:
        _tune_status(status)
        return
    if space_file is None:
        _fail(SpecError("give a search file (tune_spaces/NAME.yaml), or --status DIR"))
    try:
        spec, base, base_raw = load_search(space_file, set_)
    except SpecError as error:
        _fail(error)
    _preflight(base)
    if report:
        _preflight_report(spec, base, space_file)
    from hepray.app.run import run_job
    from hepray.tune.report import default_out_dir, write_report
    from hepray.tune.search import load_best_job, run_search

    out_dir = out or default_out_dir(spec)
    with _user_errors_as_one_line():
        summary = run_search(spec, base, base_raw, out_dir, resume=resume)
        console.print_json(json.dumps(summary, default=str))
        console.print(
            f"[green]wrote[/] {out_dir}/trials.csv, best_job.yaml; dashboard: optuna-dashboard {summary['study']}"
        )
        # Before the report, which then finds the best job (and a baseline of the same settings) trained.
        if retrain_best:
            metrics = run_job(load_best_job(out_dir), out_dir / "best")
            console.print(
                f"[green]retrained[/] best job: {out_dir}/best/metrics.json "
                f"({', '.join(f'{k}={metrics[k]:.4f}' for k in ('test_auc', 'test_auc_macro') if k in metrics)})"
            )
        if report:
            console.print(f"[green]wrote[/] {write_report(spec, base, space_file, out_dir, report_file, set_)}")


def _preflight_report(spec, base, space_file: Path) -> None:
    """--report scores the evaluation sample and trains the binary jobs after the search: check
    their files before it, so a missing sample does not end a finished search in an error."""
    from hepray.tune.intervals import evaluation_data

    files = spec.report.evaluation_files
    if files:
        sample = base.model_copy(update={"data": evaluation_data(base, files)})
        _preflight(sample, where=f"{space_file}: report.evaluation_files")
    for job_file in spec.report.binary_jobs:
        _preflight(spec.binary_job(job_file), where=f"{space_file}: report.binary_jobs: {job_file}")


def _tune_status(out_dir: Path) -> None:
    """The trial table of a search, read from its study and result files: no Ray, no training."""
    from hepray.spec import SpecError
    from hepray.tune.search import format_table, search_status

    try:
        rows = search_status(out_dir)
    except SpecError as error:
        _fail(error)
    typer.echo(format_table(rows) if rows else f"{out_dir}: no trials yet")


ADDRESS_HELP = "Ray dashboard / Jobs API address (default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)"


@app.command()
def submit(
    job_file: Path = typer.Argument(..., help="job YAML inside this project (it is uploaded with it)"),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    set_: list[str] = typer.Option([], "--set", help="override a job key: --set train.epochs=3"),
    out: str | None = typer.Option(
        None, "--out", help="output directory on the cluster (default ~/hepray-runs/<name>)"
    ),
    pip: bool = typer.Option(False, "--pip", help="install hepray's requirements in the job's environment"),
    follow_logs: bool = typer.Option(False, "--follow", help="then stream the job's log until it ends"),
) -> None:
    """Submit a job to a Ray cluster through its Jobs API; prints the job id."""
    from hepray.cluster import jobs
    from hepray.spec import SpecError, load_job

    try:
        job = load_job(job_file, set_)
    except SpecError as error:
        _fail(error)
    _preflight(job, absent_ok=True)  # files not on this machine may be on the cluster's
    try:
        job_id = jobs.submit(job_file, address, set_, out, pip)
    except (SpecError, jobs.ClusterError) as error:
        _fail(error)
    typer.echo(job_id)
    console.print(f"follow it: hepray logs {job_id} --follow" + (f" --address {address}" if address else ""))
    if follow_logs:
        _follow(job_id, address)


@app.command()
def status(
    job_id: str | None = typer.Argument(None, help="job id (default: list all jobs)"),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """The status of one job, or a table of the cluster's jobs."""
    from hepray.cluster import jobs

    try:
        if job_id:
            info = jobs.status(job_id, address)
            typer.echo(f"{info['id']} {info['status']}")
            for key in ("message", "entrypoint", "started", "ended"):
                if info[key]:
                    typer.echo(f"  {key}: {info[key]}")
            return
        for row in jobs.list_jobs(address):
            typer.echo(f"{row['id']:40} {row['status']:10} {row['started']:20} {row['entrypoint']}")
    except jobs.ClusterError as error:
        _fail(error)


@app.command()
def logs(
    job_id: str = typer.Argument(..., help="job id"),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    follow_logs: bool = typer.Option(
        False, "--follow", "-f", help="stream until the job ends; exit 1 unless it succeeded"
    ),
) -> None:
    """Print a job's log (its driver's stdout and stderr)."""
    from hepray.cluster import jobs

    if follow_logs:
        _follow(job_id, address)
        return
    try:
        typer.echo(jobs.logs(job_id, address), nl=False)
    except jobs.ClusterError as error:
        _fail(error)


@app.command()
def stop(
    job_id: str = typer.Argument(..., help="job id"),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Stop a running job and wait until it has stopped."""
    from hepray.cluster import jobs

    try:
        typer.echo(f"{job_id} {jobs.stop(job_id, address)}")
    except jobs.ClusterError as error:
        _fail(error)


def _follow(job_id: str, address: str | None) -> None:
    from hepray.cluster import jobs

    try:
        final = jobs.follow(job_id, lambda chunk: typer.echo(chunk, nl=False), address)
    except jobs.ClusterError as error:
        _fail(error)
    console.print(f"{job_id} {final}")
    if final != "SUCCEEDED":
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
