"""The fork server: torch jobs of a local run as children of one warm process (same job, same
streams, environment, working directory and exit status; fallbacks where it cannot serve)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from attrflow.jobs import forkserver
from attrflow.jobs.runtime import run_job

LOCAL_RUN = SimpleNamespace(local_exec=True, is_main_process=True)

# A job body that reports where it ran: `runpy.run_path` is a "module:function" that takes keyword
# arguments and runs any script, so the server needs no test code on its path.
REPORT = textwrap.dedent(
    """
    import json, os, sys
    print("to the job's stdout")
    with open(os.environ["REPORT_TO"], "w") as out:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                   "mark": os.environ.get("MARK"), "argv0": sys.argv[0]}, out)
    """
)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.delenv(forkserver.OPT_OUT, raising=False)
    monkeypatch.delenv(forkserver.ENV, raising=False)
    started = forkserver.start(LOCAL_RUN, log_path=str(tmp_path / "forkserver.log"))
    assert started is not None
    assert forkserver.wait_until_listening(started), (tmp_path / "forkserver.log").read_text()
    yield started
    forkserver.stop()
    assert started.process.poll() is not None
    assert not Path(started.directory).exists()
    assert forkserver.ENV not in os.environ


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job_body.py"
    path.write_text(body)
    return str(path)


def test_a_job_runs_in_a_child_of_the_server_with_the_scripts_environment(server, tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.setenv("REPORT_TO", str(report))
    monkeypatch.setenv("MARK", "set by the script's environment")
    monkeypatch.chdir(workdir)
    log = tmp_path / "logs" / "job.log"
    run_job("runpy:run_path", {"path_name": script(tmp_path, REPORT)}, log=str(log), threads=1)
    where = json.loads(report.read_text())
    assert where["pid"] != os.getpid()
    assert where["ppid"] == server.process.pid
    assert where["cwd"] == str(workdir)
    assert where["mark"] == "set by the script's environment"
    text = log.read_text()
    assert "run by a child of the fork server" in text
    assert "to the job's stdout" in text  # job_log sends stdout to the job's log, as in-process


def test_a_failing_job_fails_its_script_with_the_traceback_in_its_log(server, tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit) as failed:
        run_job("runpy:run_path", {"path_name": script(tmp_path, "raise ValueError('bad tensor')")}, log=str(log), threads=1)
    assert failed.value.code == 1
    assert "ValueError: bad tensor" in log.read_text()
    with pytest.raises(SystemExit) as stopped:
        run_job("runpy:run_path", {"path_name": script(tmp_path, "import sys; sys.exit(3)")}, log=str(log), threads=1)
    assert stopped.value.code == 3


def start_sleeping_job(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A workflow script (its own process) whose job sleeps in a child of the server: (script, child pid)."""
    pid_file = tmp_path / "child.pid"
    body = script(tmp_path, f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    client = subprocess.Popen(
        [sys.executable, "-c",
         f"from attrflow.jobs.runtime import run_job; run_job('runpy:run_path', {{'path_name': {body!r}}}, "
         f"log={str(tmp_path / 'job.log')!r}, threads=1)"],
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and client.poll() is None, "the job never started"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child != client.pid
    return client, child


def wait_until_gone(pid: int, why: str) -> None:
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_a_killed_script_ends_its_child(server, tmp_path):
    client, child = start_sleeping_job(tmp_path)
    client.send_signal(signal.SIGKILL)
    client.wait()
    wait_until_gone(child, "the child outlived its script")


def test_sigterm_to_the_script_reaches_the_child(server, tmp_path):
    client, child = start_sleeping_job(tmp_path)
    client.terminate()
    assert client.wait(timeout=10) == -signal.SIGTERM  # ends as SIGTERM would have ended it
    wait_until_gone(child, "SIGTERM never reached the child")


def test_jobs_run_here_where_no_server_can_take_them(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    monkeypatch.setenv("REPORT_TO", str(report))
    body = {"path_name": script(tmp_path, REPORT)}

    def ran_here(**env: str) -> bool:
        for name in (forkserver.ENV, forkserver.OPT_OUT):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        run_job("runpy:run_path", body, log=str(tmp_path / "job.log"), threads=1)
        return json.loads(report.read_text())["pid"] == os.getpid()

    assert ran_here()  # no server announced (a cluster job, a dry run's absence of jobs)
    identity = forkserver._identity()
    assert ran_here(ATTRFLOW_FORKSERVER=json.dumps({"socket": str(tmp_path / "gone"), "identity": identity}))
    other = {**identity, "prefix": "/another/interpreter"}  # e.g. a job in a conda environment
    assert ran_here(ATTRFLOW_FORKSERVER=json.dumps({"socket": str(tmp_path / "gone"), "identity": other}))
    assert ran_here(ATTRFLOW_FORKSERVER="not json")


def test_only_a_local_runs_main_process_starts_a_server(tmp_path, monkeypatch):
    monkeypatch.delenv(forkserver.OPT_OUT, raising=False)
    log = str(tmp_path / "forkserver.log")
    assert forkserver.start(SimpleNamespace(local_exec=False, is_main_process=True), log) is None  # SLURM
    assert forkserver.start(SimpleNamespace(local_exec=True, is_main_process=False), log) is None  # a cluster job
    monkeypatch.setenv(forkserver.OPT_OUT, "1")
    assert forkserver.start(LOCAL_RUN, log) is None
    assert not Path(log).exists()


def test_the_server_ends_when_its_snakemake_is_gone(tmp_path):
    socket_path = tmp_path / "socket"
    # Told that its parent is a process that is not its parent: as if Snakemake had died.
    server = subprocess.Popen([sys.executable, "-m", "attrflow.jobs.forkserver", str(socket_path), "1"])
    assert server.wait(timeout=120) == 0
    assert not socket_path.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


def test_a_job_can_wait_for_its_own_children(server, tmp_path, monkeypatch):
    # The server lets the kernel reap its children; a job must get its own children's status back.
    report = tmp_path / "status"
    body = f"import subprocess\nopen({str(report)!r}, 'w').write(str(subprocess.run(['sh', '-c', 'exit 3']).returncode))\n"
    run_job("runpy:run_path", {"path_name": script(tmp_path, body)}, log=str(tmp_path / "job.log"), threads=1)
    assert report.read_text() == "3"


def test_start_up_is_counted_from_the_scripts_own_start():
    # The logged start-up must fit inside the wall time the parent saw, to the meter's resolution
    # (two clocks of 10 ms ticks); psutil's create_time, off by the boot time's rounding,
    # reported up to a second more.
    before = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", "from attrflow.jobs.runtime import process_age; print(process_age())"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - before
    resolution = 0.02
    assert 0 < float(out.stdout) < wall + resolution


def test_a_new_run_removes_the_folders_of_killed_servers(tmp_path, monkeypatch):
    monkeypatch.delenv(forkserver.OPT_OUT, raising=False)
    log = str(tmp_path / "forkserver.log")
    killed = forkserver.start(LOCAL_RUN, log)
    assert forkserver.wait_until_listening(killed)
    killed.process.kill()  # as `kill -9` of the whole run: its socket stays behind
    killed.process.wait()
    forkserver._RUNNING.clear()
    assert (Path(killed.directory) / "socket").exists()
    alive = forkserver.start(LOCAL_RUN, log)
    try:
        assert forkserver.wait_until_listening(alive)
        assert not Path(killed.directory).exists()
        forkserver._remove_dead_servers()  # a live server's folder stays
        assert (Path(alive.directory) / "socket").exists()
    finally:
        forkserver.stop()
