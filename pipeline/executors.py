"""Where scene runs execute: a local thread pool of `pipeline run` processes, or Ray tasks on a cluster.

Both executors run the same thing, one `python -m pipeline run` process per scene run (a crash or OOM in one
run cannot take the others down, and every run directory stays resumable), with the same retry policy:

- a run whose stage manifests are all complete is skipped (its metrics.json is read back), so after a crash
  the same command resumes where it stopped;
- a run that fails is retried once (on Ray: `max_retries=1` when the worker process dies, `retry_exceptions`
  when the run exits non-zero), then reported as failed with the last line of its log, never dropped;
- a run never uses more threads than its CPUs (`--threads` and the OpenMP/MKL/numba thread variables);
- the `pipeline run` process is killed with the process that started it (Linux parent-death signal), so a
  killed Ray worker or table command leaves no orphan holding the run directory's lock.

Nothing here imports Ray or torch at import time: the CLI stays fast and Ray stays an optional extra.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from .common.io import InputError, read_json_if_present
from .common.progress import progress_bar

__all__ = ["ExecutorArgs", "RunSpec", "SceneRunFailed", "run_attempt", "completed_metrics", "execute",
           "metrics_row", "failed_row", "count_attempts", "row_name", "ATTEMPT_HEADER"]

ATTEMPT_HEADER = "=== pipeline run attempt"
_LOCK_WAIT_S = 60.0
# Started through this shim, `pipeline run` gets SIGKILL when the process that started it dies (Linux); the
# getppid check closes the race where the parent died before prctl ran.
_PDEATHSIG_SHIM = ("import ctypes, os, sys\n"
                   "try:\n"
                   "    ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
                   "except (AttributeError, OSError):\n"
                   "    pass\n"
                   "if os.getppid() != int(sys.argv[1]):\n"
                   "    sys.exit(137)\n"
                   "os.execv(sys.executable, [sys.executable, '-m', 'pipeline', 'run', *sys.argv[2:]])\n")


@dataclass
class ExecutorArgs:
    """How scene runs are executed (the same flags for `pipeline table` and `pipeline sweep`)."""

    executor: Literal["local", "ray"] = "local"
    """local: a thread pool of `pipeline run` processes on this machine; ray: one Ray task per run (needs the
    `ray` extra), on a local Ray instance or the cluster at --ray-address."""
    workers: int = 2
    """local executor: runs in parallel on this machine."""
    ray_address: Optional[str] = None
    """ray executor: cluster to join (auto, or HOST:PORT of `ray start --head`); default: start Ray locally."""
    cpus_per_run: int = 1
    """CPUs each run reserves (ray) and the torch/OpenMP threads it may use (both executors)."""
    gpus_per_run: Optional[float] = None
    """ray executor: GPUs each run reserves (fractions pack several runs on one GPU; Ray sets CUDA_VISIBLE_DEVICES
    and hides GPUs from runs that reserve none); default: 1 when the cluster has GPUs and a run's device is not
    cpu, else 0."""

    def __post_init__(self):
        if self.cpus_per_run < 1:
            raise InputError(f"--cpus-per-run {self.cpus_per_run}: a run needs at least 1 CPU")
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise InputError(f"--gpus-per-run {self.gpus_per_run}: must be >= 0")
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be >= 1")


@dataclass(frozen=True)
class RunSpec:
    """One `pipeline run` to execute: the config, its overrides, where it writes."""

    label: tuple[tuple[str, str], ...]  # identifies the run in rows and messages, e.g. (("dataset", "a"), ("scene", "s0"))
    config: Path  # absolute
    scene_path: Path  # absolute
    run_dir: Path  # absolute
    log: Path  # absolute; attempts append to it
    args: tuple[str, ...] = ()  # extra `--section.field value` overrides
    cwd: Path = field(default_factory=Path.cwd)  # relative paths inside the config resolve against this

    @property
    def name(self) -> str:
        return "/".join(v for _, v in self.label)

    def command_args(self, threads: int) -> list[str]:
        return [str(self.config), "--scene.path", str(self.scene_path), "--output.dir", str(self.run_dir),
                "--threads", str(threads), *self.args]


class SceneRunFailed(RuntimeError):
    """A `pipeline run` process exited non-zero (the message is one line: exit code, last log line, log path)."""


def _thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}


def _wait_for_lock(run_dir: Path, timeout_s: float) -> None:
    """Wait until no process holds the run directory's lock (a killed attempt's child may take a moment to die)."""
    lock = run_dir / ".lock"
    if not lock.is_file():
        return
    deadline = time.monotonic() + timeout_s
    with open(lock) as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SceneRunFailed(f"{run_dir}: still locked by another process after {timeout_s:.0f} s")
                time.sleep(0.2)


def count_attempts(log: Path) -> int:
    try:
        return sum(1 for line in log.read_text(errors="replace").splitlines() if line.startswith(ATTEMPT_HEADER))
    except FileNotFoundError:
        return 0


def run_attempt(spec: RunSpec, threads: int) -> dict:
    """One attempt at a run, in this process's child; the metrics row, or SceneRunFailed.

    The log gets a header line naming the host and the pid of the process running the attempt (a Ray worker
    or the table command): what to look at, or kill, when a run hangs."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    _wait_for_lock(spec.run_dir, _LOCK_WAIT_S)
    t0 = time.perf_counter()
    with open(spec.log, "a") as fh:
        fh.write(f"{ATTEMPT_HEADER} on host {socket.gethostname()} pid {os.getpid()} at "
                 f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} ===\n")
        fh.flush()
        cmd = [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *spec.command_args(threads)]
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=spec.cwd, env=_thread_env(threads))
    metrics = read_json_if_present(spec.run_dir / "metrics.json")
    if proc.returncode != 0 or metrics is None:
        lines = [ln for ln in spec.log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1].strip() if lines and not lines[-1].startswith(ATTEMPT_HEADER) else "(no output)"
        raise SceneRunFailed(f"exit {proc.returncode}: {tail} (log: {spec.log})")
    return metrics_row(spec, metrics, "done", count_attempts(spec.log), time.perf_counter() - t0)


def metrics_row(spec: RunSpec, m: dict, status: str, attempts: int, wall_s: float | None) -> dict:
    """The numbers a table needs from a run's metrics.json (uplift scores, segmenter PQ, PSNR, stage times)."""
    up = m.get("uplift") or {}
    timings = [t for t in (m.get("timings_s") or {}).values() if t is not None]
    return {**dict(spec.label), "status": status, "attempts": attempts,
            "pq": up.get("pq"), "sq": up.get("sq"), "rq": up.get("rq"), "pq_th": up.get("pq_th"),
            "pq_st": up.get("pq_st"), "miou": up.get("miou"),
            "segmenter_pq": (m.get("segmenter_on_test") or {}).get("pq"), "psnr": m.get("psnr"),
            "time_s": round(sum(timings), 3) if timings else None,
            "wall_s": None if wall_s is None else round(wall_s, 3), "timings_s": m.get("timings_s") or {}}


def failed_row(spec: RunSpec, error: str) -> dict:
    return {**dict(spec.label), "status": "failed", "attempts": count_attempts(spec.log),
            "error": " ".join(error.split())}


def _resolved_config(spec: RunSpec):
    """The RunConfig `pipeline run` will build for this spec, or None when its arguments are invalid (the run
    then reports why, in its log)."""
    import contextlib
    import io

    from .config import parse_run_args

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return parse_run_args(spec.config, spec.command_args(1)[1:])
    except (InputError, SystemExit):
        return None


def completed_metrics(spec: RunSpec) -> dict | None:
    """metrics.json of a run whose every stage manifest matches the config it would run with now, else None.

    Judged on config hashes and outputs (the scene files are not re-hashed: a run is re-checked in full by
    `pipeline run` whenever it is launched)."""
    from .cache import config_hash
    from .run import absolute_paths
    from .stages import STAGES

    metrics = read_json_if_present(spec.run_dir / "metrics.json")
    if metrics is None:
        return None
    here = Path.cwd()
    if here != spec.cwd:
        os.chdir(spec.cwd)  # relative paths in the config resolve as the run will resolve them
    try:
        cfg = _resolved_config(spec)
        cfg = None if cfg is None else absolute_paths(cfg)
    finally:
        if here != spec.cwd:
            os.chdir(here)
    if cfg is None:
        return None  # the run itself will report the problem
    timings = metrics.get("timings_s") or {}
    for name, stage in STAGES.items():
        stage_dir = spec.run_dir / name
        m = read_json_if_present(stage_dir / "manifest.json")
        if (m is None or m.get("config_hash") != config_hash(cfg, stage.sections, stage.exclude)
                or not all((stage_dir / rel).is_file() for rel in m.get("outputs", []))
                or timings.get(name) != m.get("wall_s")):  # metrics.json predates this stage's result
            return None
    return metrics


def _started(spec: RunSpec) -> bool:
    """An attempt has begun: its header is in the log (emptied when the command started)."""
    try:
        return spec.log.stat().st_size > 0
    except FileNotFoundError:
        return False


def execute(specs: list[RunSpec], run: ExecutorArgs, console=None) -> list[dict]:
    """Run every spec (complete ones are skipped); one row per spec, in order, failures included."""
    rows: dict[int, dict] = {}
    todo = []
    for i, spec in enumerate(specs):
        m = completed_metrics(spec)
        if m is not None:
            rows[i] = metrics_row(spec, m, "cached", count_attempts(spec.log), None)
        else:
            todo.append(i)
    if console is not None:
        console.print(f"{len(specs)} run(s): {len(specs) - len(todo)} complete (skipped), {len(todo)} to run "
                      f"with the {run.executor} executor, {run.cpus_per_run} CPU(s)"
                      + (" and " + ("auto" if run.gpus_per_run is None else f"{run.gpus_per_run:g}") + " GPU(s)"
                         if run.executor == "ray" else "") + " per run")
    if todo:
        driver = _execute_ray if run.executor == "ray" else _execute_local
        driver([specs[i] for i in todo], todo, rows, run, console, len(specs) - len(todo))
    return [rows[i] for i in range(len(specs))]


class _Progress:
    """The one progress bar: runs finished, with done / failed / running counts."""

    def __init__(self, total: int, initial: int, console):
        self.bar = progress_bar(total, "runs", unit="run", initial=initial, log_every_s=30.0)
        self.done, self.failed, self.console = initial, 0, console

    def finished(self, row: dict) -> None:
        failed = row["status"] == "failed"
        self.failed += failed
        self.done += not failed
        if self.console is not None:
            self.bar.clear()
            if failed:
                self.console.print(f"[red]failed[/red] {row_name(row)}: {row['error']}")
            else:
                pq = row.get("pq")
                self.console.print(f"done {row_name(row)}" + ("" if pq is None else f" · PQ {100 * pq:.1f}")
                                   + (f" · {row['attempts']} attempts" if row.get("attempts", 1) > 1 else ""))
        self.bar.update(1)

    def running(self, n: int) -> None:
        self.bar.set_postfix_str(f"done {self.done} · failed {self.failed} · running {n}", refresh=False)

    def close(self):
        self.bar.close()


def row_name(row: dict) -> str:
    return "/".join(str(v) for k, v in row.items() if k in ("setting", "dataset", "scene"))


def _fresh_logs(specs: list[RunSpec]) -> None:
    """A fresh log per invocation (attempts append to it), written once the executor is up."""
    for spec in specs:
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        spec.log.write_text("")


def _run_with_retry(spec: RunSpec, threads: int) -> dict:
    try:
        return run_attempt(spec, threads)
    except SceneRunFailed:
        try:
            return run_attempt(spec, threads)
        except SceneRunFailed as e:
            return failed_row(spec, str(e))


def _execute_local(specs, index, rows, run: ExecutorArgs, console, initial: int) -> None:
    _fresh_logs(specs)
    prog = _Progress(initial + len(specs), initial, console)
    try:
        with ThreadPoolExecutor(max_workers=run.workers) as pool:  # threads only wait on subprocesses
            futs = {pool.submit(_run_with_retry, s, run.cpus_per_run): (i, s) for i, s in zip(index, specs)}
            pending = set(futs)
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in finished:
                    rows[futs[f][0]] = f.result()
                    prog.finished(rows[futs[f][0]])
                prog.running(sum(_started(futs[f][1]) for f in pending))
    finally:
        prog.close()


def _ray_error(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, SceneRunFailed):
        return str(cause)
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _wants_gpu(spec: RunSpec) -> bool:
    """Whether the run's resolved config may use CUDA (device auto or cuda)."""
    cfg = _resolved_config(spec)
    return cfg is not None and cfg.device != "cpu"


def _execute_ray(specs, index, rows, run: ExecutorArgs, console, initial: int) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=run.ray_address or None, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError) as e:  # no cluster there, or not an address
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"--ray-address {run.ray_address}: cannot join a Ray cluster ({first}); start one with "
                             "`ray start --head`, or leave --ray-address out to run Ray on this machine") from None
    try:
        have = ray.cluster_resources().get("GPU", 0)
        gpus = run.gpus_per_run
        if gpus is None:
            gpus = 1.0 if have > 0 and any(_wants_gpu(s) for s in specs) else 0.0
            if console is not None and gpus:
                console.print(f"the Ray cluster has {have:g} GPU(s): each run reserves 1 (--gpus-per-run to change)")
        if console is not None and gpus > have:
            console.print(f"[yellow]warning: the Ray cluster has {have:g} GPU(s); runs asking for {gpus:g} wait "
                          "until a node with enough GPUs joins[/yellow]")
        task = ray.remote(run_attempt).options(num_cpus=run.cpus_per_run, num_gpus=gpus,
                                               max_retries=1, retry_exceptions=[SceneRunFailed])
        _fresh_logs(specs)
        prog = _Progress(initial + len(specs), initial, console)
        refs = {task.remote(s, run.cpus_per_run): (i, s) for i, s in zip(index, specs)}
        pending = list(refs)
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in finished:
                    i, spec = refs[ref]
                    try:
                        rows[i] = ray.get(ref)
                    except Exception as e:  # the retry failed too (RayTaskError, WorkerCrashedError, ...)
                        rows[i] = failed_row(spec, _ray_error(e))
                    prog.finished(rows[i])
                prog.running(sum(_started(refs[r][1]) for r in pending))
        except BaseException:
            for ref in pending:  # Ctrl-C: stop the cluster's work too; the next invocation resumes
                ray.cancel(ref, force=True)
            raise
        finally:
            prog.close()
    finally:
        if started_here:
            ray.shutdown()

