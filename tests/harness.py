"""What the tests that run entry points in other processes share.

- ``blob_images`` / ``write_blob_npz``: the small random data set of the resume and kill tests (blobs on
  noise, so the generator has something to fit), one definition for all of them.
- ``subprocess_env``: the environment of a training process: the repository on PYTHONPATH, CPU only,
  one device, a persistent XLA compilation cache shared by every process of the session (in pytest's
  cache folder when there is one, so later sessions start warm: the cache key holds the jax version,
  the flags and the program, so a stale entry is never used, and a cached executable is the same
  program as a fresh compilation).
- ``Proc``: one started entry point, whichever way it was started: its output files, its exit status
  (``Popen.returncode``'s convention: ``-signal`` when killed), a SIGKILL to its process group.
- ``spawn``: ``python ARGS`` as a plain subprocess.
- ``ForkServer``: ``python ARGS`` as a forked child of a server that imported jax, orbax, TensorFlow
  and the library once, before any jax backend exists (so each child sets up its own, as a fresh
  process does). The child is a new process (a copy of the server: the imports are done) in its own
  session, with its own stdin, stdout, stderr, working directory and environment; it runs ``-m MODULE``
  with ``runpy.run_module(MODULE, run_name="__main__")`` and a script with ``runpy.run_path``, what the
  interpreter does for ``python -m MODULE`` / ``python SCRIPT``, runs the atexit handlers and exits
  with the interpreter's exit status (SystemExit's code; 1 and the traceback on stderr for an uncaught
  exception). What it saves is ~10 s of imports per process on a 2-core machine; what it leaves out is
  the interpreter's own start-up and shutdown (``os._exit``: no finalizers, no waiting for threads),
  so a test about those (exit-time noise, Ctrl-C) uses ``spawn``. The entry points' modules themselves
  (their absl flags) are never imported by the server, so each child defines its flags once, as
  ``python -m`` does.

The server is this file run as a script: ``python tests/harness.py serve MODULE...`` imports the
modules, prints ``ready``, then reads one JSON request a line on stdin (argv, cwd, environment,
output files, status file), forks a child for each and prints its pid; it writes each child's exit
status to its status file when the child ends (atomically), and SIGKILLs the children still running
when its stdin closes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# Data set and environment


def blob_images(n: int = 64, size: int = 16, seed: int = 0):
    """uint8 images (n, size, size, 1): a Gaussian blob at a random centre on uniform noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(size / 4, 3 * size / 4, size=(n, 2))
    blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8.0)
    return np.clip(blobs * 220 + rng.uniform(0, 35, size=blobs.shape), 0, 255).astype(np.uint8)[..., None]


def write_blob_npz(path: Path) -> Path:
    """``blob_images()`` as an .npz data set (key ``images``) at ``path``."""
    import numpy as np

    np.savez(path, images=blob_images())
    return path


def subprocess_env(request, root: Path, drop: tuple[str, ...] = ()) -> dict:
    """The environment of a training process (see the module docstring); ``drop``: variables to unset."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cpu"
    cache = getattr(request.config, "cache", None)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("lebm_jax_xla") if cache else root / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # one CPU device per process, whatever device count the test session emulates
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    for name in drop:
        env.pop(name, None)
    return env


# ---------------------------------------------------------------------------------------------------
# Started processes


class Proc:
    """One entry point in its own session: stdout and stderr in files (``err_path`` may be ``out_path``)."""

    def __init__(self, name: str, pid: int, out_path: Path, err_path: Path, poll):
        self.name, self.pid = name, pid
        self.out_path, self.err_path = out_path, err_path
        self._poll = poll
        self.started = time.monotonic()
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._poll()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL to the process group (the process leads its own session), or to the process if it has
        not made its session yet."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if self.poll() is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def wait(self, timeout: float, interval: float = 0.02) -> int:
        """The exit status. Past ``timeout`` s from the start: killed, and the test fails with its log."""
        import pytest

        deadline = self.started + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                self._settle()
                pytest.fail(f"{self.name} did not finish within {timeout} s; its log:\n{self.tail()}")
            time.sleep(interval)
        return self.returncode

    def _settle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def stdout(self) -> str:
        return _read(self.out_path)

    @property
    def stderr(self) -> str:
        return _read(self.err_path)

    @property
    def output(self) -> str:
        return self.stdout if self.err_path == self.out_path else self.stdout + self.stderr

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def _read(path: Path) -> str:
    """The text of an output file; "" until the process has created it."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _open_outputs(out_path: Path, err_path: Path):
    out = open(out_path, "wb")
    err = out if err_path == out_path else open(err_path, "wb")
    return out, err


def spawn(name: str, args: list[str], env: dict, out_path: Path, err_path: Path | None = None,
          cwd: Path = REPO) -> Proc:
    """``python ARGS`` as a plain subprocess in its own session (stderr to ``err_path``, else with stdout)."""
    err_path = err_path or out_path
    out, err = _open_outputs(out_path, err_path)
    try:
        popen = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, start_new_session=True)
    finally:
        out.close()
        err.close()
    proc = Proc(name, popen.pid, out_path, err_path, popen.poll)
    proc.popen = popen
    return proc


class ForkServer:
    """Starts ``python ARGS`` as forked children of one server process (see the module docstring)."""

    def __init__(self, env: dict, preload: list[str], log: Path, cwd: Path = REPO):
        self.env, self.cwd, self.log = dict(env), cwd, log
        with open(log, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", *preload],
                                          cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=err, bufsize=0, start_new_session=True)
        self._buffer = b""
        self._ready = False
        self.procs: list[Proc] = []
        self._count = 0

    def _line(self, timeout: float) -> str:
        import select

        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 4096) if left > 0 and select.select([fd], [], [], min(left, 0.5))[0] else None
            if chunk == b"" or left <= 0:  # the server ended, or is stuck
                raise RuntimeError(f"the fork server did not answer (exit status {self.popen.poll()}); its log:\n"
                                   + self.log.read_text()[-3000:])
            self._buffer += chunk or b""
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_ready(self, timeout: float) -> None:
        if not self._ready:
            line = self._line(timeout)
            assert line == "ready", line
            self._ready = True

    def start(self, name: str, args: list[str], out_path: Path, err_path: Path | None = None,
              env_changes: dict | None = None, timeout: float = 300.0) -> Proc:
        """``python ARGS`` forked from the server, with ``env_changes`` added to the server's environment
        (read by the entry point when it runs; jax's settings were read when the server imported it)."""
        self.wait_ready(timeout)
        err_path = err_path or out_path
        self._count += 1
        status = out_path.parent / f".{out_path.name}.{self.popen.pid}-{self._count}.status"
        status.unlink(missing_ok=True)
        for path in {out_path, err_path}:  # empty from now on: nothing of an earlier process is read as this one's
            path.write_bytes(b"")
        request = {"args": list(args), "cwd": str(self.cwd), "env": {**self.env, **(env_changes or {})},
                   "stdout": str(out_path), "stderr": str(err_path), "status": str(status)}
        self.popen.stdin.write((json.dumps(request) + "\n").encode())
        pid = int(self._line(30.0))

        def poll() -> int | None:
            try:
                return int(status.read_text())
            except FileNotFoundError:
                return None

        proc = Proc(name, pid, out_path, err_path, poll)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Ends the server; it SIGKILLs the children still running first."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        try:
            self.popen.stdin.close()
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


# ---------------------------------------------------------------------------------------------------
# The server (this file run as a script)


def _exit_code(e: SystemExit) -> int:
    """The interpreter's exit status for an uncaught SystemExit (printing a non-int code, as it does)."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _run_as_main(args: list[str]) -> int:
    """What ``python ARGS`` does after start-up: the module or script as ``__main__``; its exit status."""
    import runpy

    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]  # run_module puts the module's file in argv[0]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
        return 0
    except SystemExit as e:
        return _exit_code(e)
    except BaseException:  # noqa: BLE001 - as the interpreter: sys.excepthook (the traceback), status 1
        sys.excepthook(*sys.exc_info())
        return 1


def _child(request: dict) -> None:
    """In the forked child: a new session, the request's files, directory and environment; never returns."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = out if request["stderr"] == request["stdout"] else os.open(
            request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((null, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        for fd in {null, out, err}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = _run_as_main(request["args"])
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
    try:
        import atexit

        atexit._run_exitfuncs()  # what the interpreter runs at exit (it reports their errors itself)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing left to write
                pass
        os._exit(code)


def serve(preload: list[str]) -> None:
    import importlib
    import select

    for name in preload:
        importlib.import_module(name)
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        # XLA's thread pools do not survive a fork: a child must set up its own backend
        assert not getattr(xla_bridge, "_backends", None), "a preloaded module set up a jax backend"
    os.write(1, b"ready\n")
    children: dict[int, str] = {}  # pid: status file
    buffer = b""
    open_ = True
    while open_ or children:
        if open_ and select.select([0], [], [], 0.01)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                open_ = False
                for pid in children:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children[pid] = request["status"]
                os.write(1, f"{pid}\n".encode())
        elif not open_:
            time.sleep(0.01)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            path = children.pop(pid)
            with open(path + ".tmp", "w") as f:
                f.write(str(os.waitstatus_to_exitcode(status)))
            os.replace(path + ".tmp", path)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2:])
