"""``--executor ray``: leaderboard cells as Ray tasks, on a loopback-only local instance or on a running cluster.

Imported only when a run asks for it (``ray`` is the optional ``cluster`` extra): the sequential path never
loads Ray. Each cell is one task reserving ``--cell-cpus`` CPUs and ``--cell-gpus`` GPUs; it runs
:func:`~anomalib_agpt.apps.leaderboard.cells.run_cell` (same seeds, same metrics as the sequential run)
with torch limited to its CPUs, in the driver's working directory. The driver collects the rows with
``ray.wait`` and hands each to ``record`` as it arrives, so ``results.csv`` grows cell by cell and a rerun
resumes as with the local executor.

Faults: ``run_cell`` records its own errors as ``failed: ...`` rows; a worker process that dies (killed,
out of memory, its node lost) is run again by Ray up to :data:`RETRIES` times, then recorded as
``failed: <why>`` while the other cells go on. Ctrl-C cancels the cells still running; only finished
rows are in ``results.csv``.

Network: without ``--ray-address`` the run starts its own Ray instance with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
set before Ray is imported, which makes Ray bind every port (GCS, raylet, workers) to 127.0.0.1, and stops
it at the end. Only ``--ray-address`` (joining a cluster) talks beyond the machine.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard import cells
from anomalib_agpt.apps.leaderboard.cells import finished_at, mark_failed
from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig
from anomalib_agpt.apps.leaderboard.results import CellKey
from anomalib_agpt.errors import SetupError

CELL = "anomalib_agpt.apps.leaderboard.cells:run_cell"
"""What a cell task runs, as ``module:function`` with ``run_cell``'s signature (the worker imports it)."""

RETRIES = 2
"""Times Ray reruns a cell whose worker process died (SIGKILL, out of memory, node lost) before it is failed."""

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch ("0": a single-machine node bound to 127.0.0.1), read when ``ray`` is imported."""

OBJECT_STORE_BYTES = 256 * 2**20
"""The local instance's object store: cells exchange only their options and rows."""

PASSED_PREFIXES = ("ANOMALIB_AGPT_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH_", "TQDM_", "MALLOC_")
PASSED_NAMES = ("PYTHONWARNINGS", "PYTHONPATH", "XDG_CACHE_HOME", "CUBLAS_WORKSPACE_CONFIG")
"""The run's environment variables every cell task gets (weights, offline switches, allocator, warnings).

Names holding ``TOKEN`` stay behind: a cluster keeps a job's variables where its dashboard shows them.
"""

Record = Callable[[dict[str, Any]], None]
"""What the driver does with each finished row (append it to ``results.csv`` and print its line)."""


def cell_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`PASSED_PREFIXES` / :data:`PASSED_NAMES` set in ``environ`` (default: this process's)."""
    environ = dict(os.environ if environ is None else environ)
    return {
        name: value
        for name, value in environ.items()
        if (name.startswith(PASSED_PREFIXES) or name in PASSED_NAMES) and "TOKEN" not in name
    }


def _import_ray() -> Any:  # noqa: ANN401  (the ray module)
    """``ray``, or a :class:`SetupError` saying how to install it."""
    try:
        import ray
    except ImportError as error:
        msg = "--executor ray needs Ray: pip install 'anomalib-agpt[cluster]' (or ray==2.60.0)"
        raise SetupError(msg) from error
    return ray


def _loopback_only(enabled: bool) -> None:
    """Make the next Ray instance this process starts bind 127.0.0.1 only (``enabled``) or reachable by a cluster.

    Ray reads :data:`LOOPBACK_SWITCH` into a constant when it is imported, and its GCS and raylet read the
    variable at their start, so both are set (the constant too, where ``ray`` was imported earlier).
    """
    os.environ[LOOPBACK_SWITCH] = "0" if enabled else "1"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = not enabled


def local_cpus() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cell_resources(config: LeaderboardConfig, cluster_gpus: float) -> tuple[int, float]:
    """(CPUs, GPUs) each cell reserves: ``--cell-gpus``, else ``--devices`` where Ray has GPUs, else 0."""
    if config.cell_gpus is not None:
        return config.cell_cpus, float(config.cell_gpus)
    return config.cell_cpus, float(config.devices) if cluster_gpus > 0 else 0.0


@contextmanager
def ray_session(config: LeaderboardConfig, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one run: join ``--ray-address``, else start a loopback-only local instance; stop what it started.

    A Ray already initialised in this process (a caller's own) is used as it is and left running.
    ``num_cpus`` sizes the local instance (default: the CPUs this process may use).
    """
    previous = {name: os.environ.get(name) for name in (LOOPBACK_SWITCH, "RAY_USAGE_STATS_ENABLED")}
    started = False
    try:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        if config.ray_address is None:
            _loopback_only(True)  # before ray is imported: it reads the switch then
        ray = _import_ray()
        if ray.is_initialized():
            where = "the Ray instance already running in this process"
        elif config.ray_address is None:
            import torch

            cpus = num_cpus or local_cpus()
            gpus = torch.cuda.device_count()
            ray.init(
                address="local",  # a new instance, whatever RAY_ADDRESS says
                num_cpus=cpus,
                num_gpus=gpus,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                runtime_env={"env_vars": cell_environment()},
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
            started = True
            where = f"a local Ray instance on 127.0.0.1 ({cpus} CPUs, {gpus} GPUs)"
        else:
            _loopback_only(False)
            try:
                ray.init(
                    address=config.ray_address,
                    runtime_env={"env_vars": cell_environment()},
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
            except ConnectionError as error:
                detail = " ".join(str(error).split())[:200]
                msg = f"--ray-address {config.ray_address}: cannot join a Ray cluster there ({detail})"
                raise SetupError(msg) from error
            started = True
            where = f"the Ray cluster at {config.ray_address}"
        _check_feasible(ray, config, local=started and config.ray_address is None, where=where)
        yield
    finally:
        if started:
            ray.shutdown()  # stops the local instance's processes; leaves a joined cluster running
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_feasible(ray: Any, config: LeaderboardConfig, local: bool, where: str) -> None:  # noqa: ANN401
    """Say where the cells run; a cell no node can hold is a :class:`SetupError` locally, a note on a cluster."""
    total = ray.cluster_resources()
    cpus, gpus = cell_resources(config, total.get("GPU", 0.0))
    print(f"Cells run as Ray tasks on {where}; each reserves {cpus} CPU(s) and {gpus:g} GPU(s).", flush=True)
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0.0) >= cpus and node.get("GPU", 0.0) >= gpus for node in nodes):
        return
    largest = max(nodes, key=lambda node: (node.get("GPU", 0.0), node.get("CPU", 0.0)), default={})
    need = f"--cell-cpus {cpus} --cell-gpus {gpus:g}"
    have = f"{largest.get('CPU', 0.0):g} CPUs and {largest.get('GPU', 0.0):g} GPUs"
    if local:
        raise SetupError(f"{need}: no cell fits on this machine, which has {have}; ask for less")
    print(f"Note: no node of {where} offers {need} now (the largest has {have}); cells wait for one.", flush=True)


def _resolve(path: str) -> Callable[..., dict[str, Any]]:
    """The function ``module:function`` names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_cell_task(
    cell: str,
    cwd: str,
    cpus: int,
    name: str,
    config: LeaderboardConfig,
    data_root: Path | None,
    category: str,
    seed: int,
) -> dict[str, Any]:
    """One cell in a Ray worker: the driver's working directory, ``cpus`` torch threads, quiet, then ``cell``."""
    import torch

    if os.path.isdir(cwd):  # relative paths of the options mean the same as on the driver
        os.chdir(cwd)
    torch.set_num_threads(cpus)
    os.environ.setdefault("TQDM_DISABLE", "1")
    cells.quiet()
    return _resolve(cell)(name, config, data_root, category, seed)


def run_cells(
    config: LeaderboardConfig,
    data_root: Path | None,
    todo: Sequence[CellKey],
    record: Record,
) -> None:
    """Run ``todo`` as Ray tasks on the connected Ray; ``record`` each row as it arrives (needs :func:`ray_session`).

    The tasks run :data:`CELL`. Ctrl-C cancels the unfinished cells and re-raises; the rows recorded until
    then stay.
    """
    import ray

    cpus, gpus = cell_resources(config, ray.cluster_resources().get("GPU", 0.0))
    task = ray.remote(run_cell_task)
    options = {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_retries": RETRIES,
        "retry_exceptions": False,  # run_cell records its own errors: only a dead worker is worth a rerun
    }
    cwd = os.getcwd()
    submitted = time.perf_counter()
    pending = {
        task.options(name=f"{name}/{category}/seed{seed}", **options).remote(
            CELL, cwd, cpus, name, config, data_root, category, int(seed)
        ): (name, category, seed)
        for name, category, seed in todo
    }
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as error:
                    row = _failed_row(config, key, error, time.perf_counter() - submitted)
                record(row)
    except KeyboardInterrupt:
        for ref in pending:
            with contextlib.suppress(Exception):  # Ray's own processes may be going down with the same Ctrl-C
                ray.cancel(ref, force=True)
        print(
            f"Interrupted: {len(pending)} unfinished cell(s) cancelled; results.csv keeps the finished ones "
            "(run again with the same --output to resume).",
            flush=True,
        )
        raise


def _failed_row(config: LeaderboardConfig, key: CellKey, error: Exception, seconds: float) -> dict[str, Any]:
    """The row of a cell whose task ended in a Ray error; its full text goes to ``OUTPUT/errors``."""
    import ray

    name, category, seed = key
    cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
    if isinstance(cause, BaseException):
        why = f"{type(cause).__name__}: {cause}"
    else:
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        why = f"{type(error).__name__}: {first}"
        if isinstance(error, ray.exceptions.WorkerCrashedError | ray.exceptions.OutOfMemoryError):
            why += f" ({RETRIES + 1} attempts)"
    row: dict[str, Any] = {"model": name, "category": category, "seed": seed}
    mark_failed(row, config, why, f"{type(error).__name__}: {error}\n")
    return row | {"seconds": seconds, "finished_at": finished_at()}
