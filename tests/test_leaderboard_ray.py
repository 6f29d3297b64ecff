"""``leaderboard --executor ray``: same rows as the sequential run, dead workers retried, failures, resume, loopback.

Most tests share one local Ray instance (2 CPUs) started by ``ray_executor.ray_session``, the way the
command starts its own; the command-line tests run ``anomalib-agpt leaderboard`` in a subprocess that
starts and stops its own instance. Cells are tiny (64 px synthetic images, random-small AnomalyGPT).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml

from anomalib_agpt import leaderboard
from anomalib_agpt.apps.leaderboard import ray_executor
from anomalib_agpt.apps.leaderboard.results import COLUMNS, METRICS
from anomalib_agpt.errors import SetupError
from tests.ray_helpers import FAULTS, attempts_file

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (the cluster extra)")

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {"num_train": 4, "num_test_good": 2, "num_test_defect": 1, "image_size": 64}
MODELS = ["AnomalyGPT-0shot", "AnomalyGPT-1shot"]
TRAINED = ["AnomalyGPT-fullshot", "Patchcore"]  # cells that fit: training steps and a coreset, seeded
COMPARED = MODELS + TRAINED
CATEGORIES = ["weave"]  # two cells at once on the 2-CPU instance; each cell's row is checked on its own
FAULTY_CELL = "tests.ray_helpers:faulty_cell"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
RAY_DAEMONS = {"raylet", "gcs_server"}
Key = tuple[str, str, str]


def _config(output: Path, models: list[str], executor: str = "ray", categories: list[str] = CATEGORIES):
    return leaderboard.LeaderboardConfig(
        output=output,
        models=models,
        categories=categories,
        seeds=[0],
        synthetic=SYNTHETIC,
        executor=executor,
        epochs=1,  # the trained cells: one epoch is enough to compare their rows
    )


def _rows(output: Path) -> dict[Key, dict[str, str]]:
    with (output / "results.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:  # complete rows only: every column present, a status
        assert list(row) == list(COLUMNS), row
        assert None not in row.values(), row
        assert row["status"], row
    return {(row["model"], row["category"], row["seed"]): row for row in rows}


def _row_count(output: Path) -> int:
    path = output / "results.csv"
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def _environment(**extra: str) -> dict[str, str]:
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for the in-process tests; workers import tests.* via PYTHONPATH."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", _environment()["PYTHONPATH"])
        patch.setenv("HF_HUB_OFFLINE", "1")
        with ray_executor.ray_session(leaderboard.LeaderboardConfig(executor="ray"), num_cpus=2):
            yield


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> dict[Key, dict[str, str]]:
    """The rows of the small leaderboard run one cell after another in this process."""
    output = tmp_path_factory.mktemp("sequential")
    with _threads(1):  # as each Ray cell runs (--cell-cpus 1): the same summation order
        leaderboard.run_leaderboard(_config(output, COMPARED, executor="local"), show_outputs=False)
    return _rows(output)


@pytest.fixture(scope="module")
def parallel(ray_instance: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the same leaderboard run as Ray tasks."""
    output = tmp_path_factory.mktemp("parallel")
    leaderboard.run_leaderboard(_config(output, COMPARED), show_outputs=False)
    return output


@contextmanager
def _threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_ray_cells_give_the_sequential_rows(sequential: dict[Key, dict[str, str]], parallel: Path) -> None:
    """Every cell's row, trained ones included (a decoder's steps, Patchcore's coreset), equals its sequential row."""
    rows = _rows(parallel)
    assert set(rows) == set(sequential) == {(m, c, "0") for m in COMPARED for c in CATEGORIES}
    for key, row in rows.items():
        assert row["status"] == sequential[key]["status"] == "ok", key
        assert row["notes"] == sequential[key]["notes"]
        for metric in METRICS:
            if sequential[key][metric]:
                assert math.isclose(float(row[metric]), float(sequential[key][metric]), abs_tol=1e-6), (key, metric)
            else:
                assert not row[metric], (key, metric)
        assert float(row["image_AUROC"]) >= 0


def test_dead_worker_is_retried_and_failures_are_recorded(
    ray_instance: None,
    sequential: dict[Key, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker SIGKILLed once reruns its cell; one killed every time, or a raising task, ends ``failed``."""
    faults = {"AnomalyGPT-0shot": "kill_once", "AnomalyGPT-2shot": "raise", "AnomalyGPT-4shot": "kill_always"}
    (tmp_path / FAULTS).write_text(json.dumps(faults))
    monkeypatch.setattr(ray_executor, "CELL", FAULTY_CELL)
    monkeypatch.setattr(ray_executor, "RETRIES", 1)  # one retry proves the count; each costs a worker's start
    models = ["AnomalyGPT-0shot", "AnomalyGPT-1shot", "AnomalyGPT-2shot", "AnomalyGPT-4shot", "NoSuchModel"]
    leaderboard.run_leaderboard(_config(tmp_path, models, categories=["weave"]), show_outputs=False)
    rows = {key[0]: row for key, row in _rows(tmp_path).items()}
    assert set(rows) == set(models)

    def attempts(name: str) -> int:
        return len(attempts_file(tmp_path, name, "weave", 0).read_text().splitlines())

    killed = rows["AnomalyGPT-0shot"]
    assert killed["status"] == "ok"
    assert attempts("AnomalyGPT-0shot") == 2  # killed, then run again by Ray
    reference = sequential[("AnomalyGPT-0shot", "weave", "0")]
    assert math.isclose(float(killed["image_AUROC"]), float(reference["image_AUROC"]), abs_tol=1e-6)
    assert rows["AnomalyGPT-1shot"]["status"] == "ok"
    assert rows["AnomalyGPT-2shot"]["status"] == "failed: RuntimeError: injected failure of AnomalyGPT-2shot"
    assert attempts("AnomalyGPT-2shot") == 1  # an error in the task is not retried
    dead = rows["AnomalyGPT-4shot"]["status"]
    assert dead.startswith("failed: WorkerCrashedError: "), dead
    assert dead.endswith(f"({ray_executor.RETRIES + 1} attempts)"), dead
    assert attempts("AnomalyGPT-4shot") == ray_executor.RETRIES + 1
    assert rows["NoSuchModel"]["status"].startswith("failed: ")  # run_cell's own failure row
    assert "NoSuchModel" in rows["NoSuchModel"]["status"]
    for name in ("AnomalyGPT-2shot", "AnomalyGPT-4shot", "NoSuchModel"):
        assert (tmp_path / "errors" / f"{name}_weave_seed0.txt").is_file(), name
    assert "failed: " in (tmp_path / "leaderboard.md").read_text()


def test_resume_runs_only_missing_cells_with_either_executor(
    parallel: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "resumed"
    output.mkdir()
    # the zero- and one-shot cells of the Ray run (the data is made again; the runs are not needed)
    header, *cells = (parallel / "results.csv").read_text().splitlines(keepends=True)
    lines = [header, *(line for line in cells if line.split(",", 1)[0] in MODELS)]
    (output / "results.csv").write_text("".join(lines[:-1]))  # the last cell is missing
    missing = next(csv.DictReader(lines[:1] + lines[-1:]))
    monkeypatch.setattr(ray_executor, "CELL", FAULTY_CELL)  # counts the cells that run
    capsys.readouterr()
    leaderboard.run_leaderboard(_config(output, MODELS), show_outputs=False)
    ran = sorted(path.name for path in (output / "attempts").iterdir())
    assert ran == [attempts_file(output, missing["model"], missing["category"], 0).name]
    assert set(_rows(output)) == {key for key in _rows(parallel) if key[0] in MODELS}
    assert _row_count(output) == len(lines) - 1
    assert {row["status"] for row in _rows(output).values()} == {"ok"}
    printed = capsys.readouterr().out
    assert "1 of 2 cells already done, 1 to run." in printed
    for executor in ("ray", "local"):
        leaderboard.run_leaderboard(_config(output, MODELS, executor=executor), show_outputs=False)
        printed = capsys.readouterr().out
        assert "2 of 2 cells already done, 0 to run." in printed
        assert "Cells run as Ray tasks" not in printed  # nothing to run: Ray is not even asked
        assert _row_count(output) == len(lines) - 1
    assert len(list((output / "attempts").iterdir())) == 1


def _ray_processes(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and its descendants (a local Ray instance: GCS, raylet, agents, workers)."""
    found = [root]
    with contextlib.suppress(psutil.NoSuchProcess):
        found += root.children(recursive=True)
    return found


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``processes``."""
    sockets = []
    for process in processes:
        try:
            name = process.name()
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        sockets += [(name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return sockets


def test_local_instance_listens_on_loopback_only(ray_instance: None) -> None:
    processes = _ray_processes(psutil.Process())
    names = set()
    for process in processes:
        try:
            names.add(process.name())
        except psutil.NoSuchProcess:
            continue
    assert names >= RAY_DAEMONS
    sockets = _listening(processes)
    assert {name for name, _, _ in sockets} >= RAY_DAEMONS, sockets
    assert [socket for socket in sockets if socket[1] not in LOOPBACK] == []


def test_no_cell_fits_is_an_error_on_the_local_instance(ray_instance: None) -> None:
    import ray

    config = leaderboard.LeaderboardConfig(executor="ray", cell_cpus=64)
    with pytest.raises(SetupError, match="--cell-cpus 64 --cell-gpus 0: no cell fits on this machine"):
        ray_executor._check_feasible(ray, config, local=True, where="a local Ray instance")


SCRIPT = """\
import sys
from anomalib_agpt.apps.leaderboard import ray_executor
ray_executor.CELL = "tests.ray_helpers:faulty_cell"
from anomalib_agpt.apps.cli import main
main(sys.argv[1:])
"""
SEQUENTIAL_SCRIPT = """\
import sys
from anomalib_agpt.apps.cli import main
main(sys.argv[1:])
assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] == 'ray')
print('ray not imported')
"""


def _session_processes(ray_dir: str) -> list[psutil.Process]:
    """The processes of a Ray instance whose files are under ``ray_dir`` (``RAY_TMPDIR``)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(ray_dir in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def _wait_gone(ray_dir: str, seconds: float = 20) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := _session_processes(ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_command_interrupted_then_resumed_leaves_no_ray_behind(tmp_path: Path) -> None:
    """The command starts its own loopback instance; Ctrl-C keeps the finished rows and leaves no Ray behind.

    The rerun finishes the missing cell with the default (sequential) executor, which never imports Ray.
    """
    output = tmp_path / "out"
    output.mkdir()
    config = tmp_path / "leaderboard.yaml"
    models = ["AnomalyGPT-0shot", "AnomalyGPT-1shot", "AnomalyGPT-2shot"]
    config.write_text(yaml.safe_dump({"synthetic": SYNTHETIC, "categories": ["weave"], "models": models}))
    (output / FAULTS).write_text(json.dumps({"AnomalyGPT-1shot": "hang"}))
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    command = [sys.executable, "-c", SCRIPT, "leaderboard", "--config", str(config), "--output", str(output)]
    command += ["--executor", "ray"]
    environment = _environment(RAY_TMPDIR=ray_dir)
    try:
        log = (tmp_path / "stdout.txt").open("w")
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 150
        while _row_count(output) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _row_count(output) == 2, (tmp_path / "stdout.txt").read_text()
        instance = _session_processes(ray_dir)
        assert {p.name() for p in instance} >= RAY_DAEMONS
        sockets = _listening(instance)
        assert sockets
        assert [s for s in sockets if s[1] not in LOOPBACK] == []
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        process.wait(timeout=60)
        log.close()
        printed = (tmp_path / "stdout.txt").read_text()
        assert process.returncode != 0
        assert "Interrupted: 1 unfinished cell(s) cancelled" in printed, printed
        assert "Cells run as Ray tasks on a local Ray instance on 127.0.0.1 (" in printed
        rows = _rows(output)
        assert sorted(key[0] for key in rows) == ["AnomalyGPT-0shot", "AnomalyGPT-2shot"]
        assert all(row["status"] == "ok" for row in rows.values())
        assert _wait_gone(ray_dir) == []

        rerun = [sys.executable, "-c", SEQUENTIAL_SCRIPT, *command[3:-2]]  # the same options, no --executor ray
        done = subprocess.run(rerun, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Resuming from {output / 'results.csv'}: 2 of 3 cells already done, 1 to run." in done.stdout
        assert done.stdout.splitlines()[-1] == "ray not imported"
        rows = _rows(output)
        assert sorted(key[0] for key in rows) == models
        assert all(row["status"] == "ok" for row in rows.values())
    finally:
        for process in _session_processes(ray_dir):
            process.kill()
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_executor_options_from_flags_and_yaml(tmp_path: Path) -> None:
    defaults = leaderboard.parse_args([])
    assert (defaults.executor, defaults.ray_address, defaults.cell_cpus, defaults.cell_gpus) == ("local", None, 1, None)
    dashed = ["--executor", "ray", "--ray-address", "auto", "--cell-cpus", "2", "--cell-gpus", "0.5"]
    parsed = leaderboard.parse_args(dashed)
    assert (parsed.executor, parsed.ray_address, parsed.cell_cpus, parsed.cell_gpus) == ("ray", "auto", 2, 0.5)
    underscored = ["--" + arg[2:].replace("-", "_") if arg.startswith("--") else arg for arg in dashed]
    assert leaderboard.parse_args(underscored) == parsed
    config = tmp_path / "leaderboard.yaml"
    config.write_text("executor: ray\nray-address: auto\ncell_cpus: 2\ncell-gpus: 0.5\n")
    assert leaderboard.parse_args(["--config", str(config)]) == parsed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ray-address", "auto"], "error: --ray-address auto needs --executor ray"),
        (["--executor", "ray", "--cell-gpus", "1.5"], "error: --cell-gpus 1.5: expected 0, a fraction up to 1"),
        (["--executor", "ray", "--cell-gpus", "-1"], "error: --cell-gpus -1: expected 0, a fraction up to 1"),
        (["--executor", "ray", "--cell-cpus", "0"], "error: --cell-cpus 0: expected 1 or more"),
        (["--executor", "ray", "--devices", "2", "--cell-gpus", "1"], "error: --devices 2 needs --cell-gpus 2"),
        (["--executor", "dask"], "error: argument --executor: invalid choice: 'dask'"),
    ],
)
def test_executor_option_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        leaderboard.parse_args(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(message)


def test_cell_resources_and_environment() -> None:
    config = leaderboard.LeaderboardConfig(executor="ray")
    assert ray_executor.cell_resources(config, cluster_gpus=0) == (1, 0.0)
    assert ray_executor.cell_resources(config, cluster_gpus=4) == (1, 1.0)  # a GPU each where Ray has GPUs
    config.cell_gpus, config.cell_cpus = 0.5, 3
    assert ray_executor.cell_resources(config, cluster_gpus=4) == (3, 0.5)
    environ = {
        "ANOMALIB_AGPT_CHECKPOINT": "d.pt",
        "HF_HUB_OFFLINE": "1",
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore",
        "HOME": "/home/x",
        "SSH_AUTH_SOCK": "/tmp/agent",
        "HF_TOKEN": "secret",
    }
    passed = ray_executor.cell_environment(environ)
    assert passed == {key: value for key, value in environ.items() if key not in {"HOME", "SSH_AUTH_SOCK", "HF_TOKEN"}}


def test_missing_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where the extra is not installed
    before = {name: os.environ.get(name) for name in (ray_executor.LOOPBACK_SWITCH, "RAY_USAGE_STATS_ENABLED")}
    with (
        pytest.raises(SetupError, match=r"--executor ray needs Ray: pip install 'anomalib-agpt\[cluster\]'"),
        ray_executor.ray_session(leaderboard.LeaderboardConfig(executor="ray")),
    ):
        pass
    assert {name: os.environ.get(name) for name in before} == before  # the environment as it was
