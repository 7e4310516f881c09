"""Run the workflow's torch jobs in processes forked from one warm server, not fresh interpreters.

Every torch job of a local run used to pay ≈ 1.3 s before its first line of work (a new
interpreter, Snakemake's script preamble, `import torch` at 1.1 s) and more while it imported
the model loader and the method's code: with a hundred short jobs, a fifth of all job time
(benchmarks/RESULTS.md). During a local run (`make run`, `snakemake --cores N`)
the Snakefile's `onstart` starts one server process that imports torch, numpy, zarr and the job
modules once and then waits on a Unix socket. A workflow script (`runtime.run_job`) sends its
job — the function's name and arguments, its log, its threads, its working directory,
environment and standard streams — and the server forks a child that runs exactly what the
script would have run itself; the script waits for the child's exit status and exits with it.

Nothing about a result changes: the child is a copy of a process that has only imported
modules, it takes the job's environment, working directory and thread limits, and every job sets
its own seeds. Anything the server cannot serve falls back to running in the script's own
process: no server (cluster jobs, dry runs, `ATTRFLOW_NO_FORKSERVER=1`, a system other than
Linux, where forking a process that has loaded system frameworks is not safe), another
interpreter or another attrflow (a `--sdm conda` job), a socket that does not answer.

The child ends with its script: a killed script (Ctrl-C, `kill -9`, a cluster's time limit)
closes the socket, and the child exits at once; SIGTERM, SIGINT and SIGHUP sent to the script
are passed on to the child. The server exits when the Snakemake process that started it is
gone, or when `onsuccess`/`onerror` stop it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ENV = "ATTRFLOW_FORKSERVER"
OPT_OUT = "ATTRFLOW_NO_FORKSERVER"
# What the server imports before it listens: what the torch jobs import at their start.
PRELOAD = (
    "numpy",
    "torch",
    "zarr",
    "attrflow.jobs.attribute",
    "attrflow.jobs.score",
    "attrflow.jobs.axioms",
    "attrflow.jobs.references",
    "attrflow.jobs.prepare",
    "attrflow.models.cards",
)
# Snakemake gives a script these from the rule's `threads`; the server imports its libraries with
# 1 (most jobs' value) and each child sets its own with threadpoolctl and torch.set_num_threads.
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
)  # fmt: skip
_HEADER = struct.Struct("!Q")
_PREFIX = "attrflow-forkserver-"


def _identity() -> dict[str, str]:
    """What must match for a forked child to run this job as the script would: the interpreter
    and the attrflow it imports."""
    import attrflow

    return {"prefix": os.path.realpath(sys.prefix), "attrflow": os.path.realpath(os.path.dirname(attrflow.__file__))}


# ---------------------------------------------------------------------------------- the client


def submit(log: str | None, target: str, threads: int, arguments: dict[str, Any], started: float) -> int | None:
    """Run the job in a child of the server; its exit status, or None when no server takes it
    (then nothing has run and the caller runs the job itself)."""
    announced = os.environ.get(ENV)
    if not announced or os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return None
    try:
        server = json.loads(announced)
        if server["identity"] != _identity():
            return None
        request = pickle.dumps({
            "log": log, "target": target, "threads": threads, "arguments": arguments, "started": started,
            "cwd": os.getcwd(), "env": dict(os.environ), "argv": list(sys.argv),
        })  # fmt: skip
    except Exception:  # a malformed announcement, or arguments that do not pickle: run here
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(server["socket"])
        socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        sock.sendall(request)
        replies = sock.makefile("rb")
        first = replies.readline()
    except OSError:
        sock.close()
        return None
    if not first:  # the server closed the connection before forking: nothing ran
        sock.close()
        return None
    child = int(json.loads(first)["pid"])
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        last = replies.readline()
    finally:
        sock.close()
    if last:
        return int(json.loads(last)["exit"])
    if forwarded:  # end as the signal would have ended the script itself
        signal.signal(forwarded[0], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[0])
    print(f"attrflow: the job's process (pid {child}, forked by the fork server) ended without an exit status",
          file=sys.stderr)  # fmt: skip
    return 1


# ---------------------------------------------------------------------------------- the server


def serve(socket_path: str, parent: int) -> None:
    """Import what jobs import, then fork a child per connection until ``parent`` is gone."""
    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
    for module in PRELOAD:
        importlib.import_module(module)
    if sys.modules["torch"].cuda.is_initialized():  # CUDA cannot be used in a forked child
        print("attrflow fork server: CUDA was initialised while importing; not serving", file=sys.stderr)
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound under a temporary name and renamed, so a client never finds a socket that does not
    # listen yet (it would fall back to running its job itself, which is also fine).
    pending = f"{socket_path}.{os.getpid()}"
    listener.bind(pending)
    listener.listen(64)
    os.replace(pending, socket_path)
    listener.settimeout(1.0)
    try:
        while os.getppid() == parent:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the job may wait for its own children
                _child(conn)  # never returns
            conn.close()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole run's process group: the run is ending
        pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(socket_path)


def _receive(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the job's script closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _child(conn: socket.socket) -> None:
    code = 1
    try:
        conn.settimeout(None)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if not header:  # a connection that only checked whether the server is alive
            os._exit(0)
        request = pickle.loads(_receive(conn, _HEADER.unpack(header)[0]))
        for number, fd in enumerate(fds):
            os.dup2(fd, number)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        # The script's end (killed, or its job cancelled) closes the socket: end with it.
        threading.Thread(target=_end_with_script, args=(conn,), daemon=True).start()
        code = _run(request)
    except BaseException:  # noqa: BLE001 - a child must report, never return into the server loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)


def _end_with_script(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.recv(1)
    os._exit(1)


def _run(request: dict[str, Any]) -> int:
    from threadpoolctl import threadpool_limits

    from attrflow.jobs import runtime

    runtime.STARTED_AT = float(request["started"])
    with threadpool_limits(limits=max(1, int(request["threads"]))):
        try:
            runtime.run_here(request["log"], request["target"], request["threads"], request["arguments"])
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001 - the script would have printed it and exited 1
            traceback.print_exc()
            return 1
    return 0


# ------------------------------------------------------------------ started by the Snakefile


def _socket_in(directory: str) -> str:
    return os.path.join(directory, "socket")


class ForkServer:
    """The server of one local Snakemake run (see `start`): its process and private folder."""

    def __init__(self, process: subprocess.Popen, directory: str) -> None:
        self.process, self.directory = process, directory

    @property
    def socket_path(self) -> str:
        return _socket_in(self.directory)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.process.poll() is None:
            self.process.kill()
        os.environ.pop(ENV, None)
        shutil.rmtree(self.directory, ignore_errors=True)


def start(workflow: Any, log_path: str = "logs/forkserver.log") -> ForkServer | None:
    """Start the fork server for a local run's jobs (Snakefile `onstart`); None where jobs do
    not run as children of this process (cluster executors, a cluster job's own Snakemake), off
    Linux, or where the user opted out with ATTRFLOW_NO_FORKSERVER=1."""
    if os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return None
    if not (getattr(workflow, "local_exec", False) and getattr(workflow, "is_main_process", False)):
        return None
    _remove_dead_servers()
    directory = tempfile.mkdtemp(prefix=_PREFIX)  # mode 0700: this user only
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "attrflow.jobs.forkserver", _socket_in(directory), str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    server = ForkServer(process, directory)
    os.environ[ENV] = json.dumps({"socket": server.socket_path, "identity": _identity()})
    atexit.register(server.stop)
    _RUNNING.append(server)
    return server


def _remove_dead_servers() -> None:
    """Remove the folders of servers that were killed with their run (`kill -9` leaves its
    socket behind): those whose socket no longer accepts a connection."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        socket_path = _socket_in(str(folder))
        if not (folder.is_dir() and folder.stat().st_uid == os.getuid() and os.path.exists(socket_path)):
            continue  # another user's, or a server still importing
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(socket_path)
        except ConnectionRefusedError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass
        finally:
            probe.close()


def stop() -> None:
    """Stop the servers `start` started (Snakefile `onsuccess` and `onerror`)."""
    while _RUNNING:
        _RUNNING.pop().stop()


_RUNNING: list[ForkServer] = []


def wait_until_listening(server: ForkServer, timeout: float = 60.0) -> bool:
    """For tests: True once the server accepts jobs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        if os.path.exists(server.socket_path):
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
