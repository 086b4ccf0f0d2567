r"""What every entry point in experiments/ shares: flag parsing and errors as one line.

    from experiments import _cli
    ...
    if __name__ == "__main__":
        _cli.run(main)

``run(main)`` is ``absl.app.run`` with two changes:

* Expected user errors end the process with ONE line on stderr, ``error: <what, and what to do>``, and no
  traceback: a bad flag or flag value, an unknown ``--config.<field>`` (named, with its valid fields), a
  ``--config`` file that does not exist (exit status 2 for these command-line errors); and, raised while
  ``main`` runs, a ``ValueError``, ``RuntimeError``, ``FloatingPointError`` or ``OSError`` raised by this
  repository's own code (``lebm_jax``, ``experiments``: worded errors about a config value, a data set, a
  checkpoint, a workdir), an ``OSError`` that names a file, and ``UserError`` (exit status 1).
* Ctrl-C prints one line, ``interrupted (Ctrl-C)`` and what to do next, and exits with status 130, once the
  code it interrupted has unwound (a training loop flushes its logs and closes its checkpoints). Two guards make
  that hold whenever the signal lands: a KeyboardInterrupt that library code swallows (native code that
  checks for signals and drops the error) is raised again every REDELIVER_S seconds until it reaches ``run``;
  and the process then ends with ``os._exit``, skipping the interpreter's finalisation, which can crash
  (SIGSEGV) when the interrupt cut short a compilation whose threads are still running.

Any other exception (a genuine bug) keeps its full traceback. ``--traceback`` (defined here, so every entry
point has it) shows the traceback of the expected errors too.

``require_directory`` and ``require_parent_directory`` check a path flag before any work, creating nothing.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import logging
import _thread
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_module  # is_config_flag

_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "On an error, print the full Python traceback instead of the one-line message.")

USAGE_EXIT, ERROR_EXIT, INTERRUPT_EXIT = 2, 1, 130
REDELIVER_S = 10.0  # seconds after a Ctrl-C that has not reached ``run`` before it is raised again
HELP = "see --helpshort"


class UserError(Exception):
    """A mistake in the command line or its inputs; its message is the whole story (one line)."""


# ---------------------------------------------------------------------------------------------------
# Paths


def require_directory(path: str | None, flag: str = "--workdir") -> str:
    """``path`` as given, if it is an existing directory or one that can be created; creates nothing.

    Raises UserError naming ``flag=path`` when ``path`` (or a folder above it) is a file, or when the
    nearest existing folder above a new ``path`` is not writable.
    """
    if not path:
        raise UserError(f"{flag} is empty: give a directory")
    problem = _directory_problem(os.path.abspath(os.path.expanduser(path)))
    if problem:
        raise UserError(f"{flag}={path}: {problem}; it must be a directory: give a new path or an existing directory")
    return path


def require_parent_directory(path: str | None, flag: str, suffix: str = "") -> str | None:
    """``path`` as given, if ``path + suffix`` (a file to be written) can be created; creates nothing."""
    if path:
        target = os.path.abspath(os.path.expanduser(path + suffix))
        if os.path.isdir(target):
            raise UserError(f"{flag}={path}: {target} is a directory; give a file name")
        problem = _directory_problem(os.path.dirname(target))
        if problem:
            raise UserError(f"{flag}={path}: cannot write {target}: {problem}; give a path in a directory")
    return path


def _directory_problem(full: str) -> str | None:
    """Why the absolute path ``full`` cannot be used as a directory (existing or created), or None."""
    if os.path.exists(full):
        return None if os.path.isdir(full) else f"{full} is a file, not a directory"
    above = os.path.dirname(full)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return f"{above} is a file, so no directory can be created under it"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"{above} is not writable, so {full} cannot be created"
    return None


def no_arguments(argv: Sequence[str]) -> None:
    """Every entry point takes flags only."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}: flags take the form --name=value")


# ---------------------------------------------------------------------------------------------------
# Running


def run(main: Callable[[list[str]], object], on_interrupt: str = "") -> None:
    """``absl.app.run(main)`` with one-line errors (see the module docstring). ``on_interrupt``: what to do
    after Ctrl-C (e.g. how to resume), added to the line ``interrupted (Ctrl-C)``."""
    interrupted = "interrupted (Ctrl-C)" + (f"; {on_interrupt}" if on_interrupt else "")
    pending = threading.Event()  # set by Ctrl-C, cleared once its KeyboardInterrupt has reached us

    def redeliver():
        while pending.wait() and not _sleep_unless_cleared(pending, REDELIVER_S):
            _thread.interrupt_main()  # swallowed somewhere: raise it again in the main thread

    def on_sigint(signum, frame):
        if not pending.is_set():
            pending.set()
            if not any(t.name == "ctrl-c-redelivery" for t in threading.enumerate()):
                threading.Thread(target=redeliver, name="ctrl-c-redelivery", daemon=True).start()
        raise KeyboardInterrupt

    def stop_interrupted():
        pending.clear()
        _print(interrupted)
        logging_flush()
        os._exit(INTERRUPT_EXIT)

    def guarded(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            pending.clear()
            if _TRACEBACK.value:
                raise
            stop_interrupted()
        except app.UsageError as e:
            if _TRACEBACK.value:
                raise
            _print(f"error: {_one_line(str(e))} ({HELP})")
            sys.exit(USAGE_EXIT)
        except Exception as e:  # noqa: BLE001 - re-raised below unless it is an expected user error
            message = user_message(e)
            if message is None or _TRACEBACK.value:
                raise
            _print(f"error: {message}")
            # Keep the error one line: a library can leave objects whose clean-up fails at interpreter exit
            # (an abandoned reader of a damaged checkpoint prints "Exception ignored in: <coroutine ...>").
            sys.unraisablehook = lambda unraisable: None
            sys.exit(ERROR_EXIT)

    def parse(argv):
        try:
            return _parse_flags(argv)
        except KeyboardInterrupt:
            pending.clear()
            if _traceback_in(argv):
                raise
            stop_interrupted()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    app.run(guarded, flags_parser=parse)


def _sleep_unless_cleared(event: threading.Event, seconds: float) -> bool:
    """Sleeps up to ``seconds``; True as soon as ``event`` is cleared (polled every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not event.is_set():
            return True
        time.sleep(0.1)
    return not event.is_set()


def logging_flush() -> None:
    """Flushes Python's log handlers and the standard streams (before ``os._exit``, which does not)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()


def user_message(e: BaseException) -> str | None:
    """The one-line message for an expected user error, or None for an exception that must keep its traceback."""
    if isinstance(e, UserError):
        return _one_line(str(e))
    ours = _raised_here(e)
    if isinstance(e, OSError):
        if ours:
            return _one_line(str(e))
        return _os_error(e) if e.filename else None
    if ours and isinstance(e, (ValueError, RuntimeError, FloatingPointError)):
        return _one_line(str(e))
    return None


def _os_error(e: OSError) -> str:
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    advice = {
        errno.ENOENT: "check the path",
        errno.EEXIST: "a file is in the way; it must be a directory",
        errno.ENOTDIR: "a file is in the way; it must be a directory",
        errno.EISDIR: "it is a directory; give a file",
        errno.EACCES: "check its permissions",
        errno.EPERM: "check its permissions",
        errno.EROFS: "the file system is read-only; use another path",
        errno.ENOSPC: "the disk is full; free some space",
    }.get(e.errno, "check the path")
    return _one_line(f"{where}: {e.strerror or e}; {advice}")


def _raised_here(e: BaseException) -> bool:
    """Whether ``e`` was raised by a ``raise`` in this repository's code (a worded, deliberate error)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.realpath(tb.tb_frame.f_code.co_filename)
    return any(filename.startswith(root + os.sep) for root in _our_roots())


def _our_roots() -> list[str]:
    roots = [os.path.dirname(os.path.realpath(__file__))]
    spec = importlib.util.find_spec("lebm_jax")
    if spec is not None and spec.submodule_search_locations:
        roots += [os.path.realpath(p) for p in spec.submodule_search_locations]
    return roots


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _print(line: str) -> None:
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)


def _traceback_in(argv: Sequence[str]) -> bool:
    """--traceback on the raw command line (flags may not be parsed yet)."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.lstrip("-") in ("traceback", "traceback=true", "traceback=True", "traceback=1"):
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Flag parsing


def _parse_flags(argv: list[str]) -> list[str]:
    """flags.FLAGS(argv), with its errors as one line."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        if _traceback_in(argv):
            raise
        message = str(e)
        # a config file that fails inside get_config(): its traceback is the useful part; keep it
        _print(f"error: {message if 'Traceback' in message else _one_line(message)} ({HELP})")
        sys.exit(USAGE_EXIT)
    except Exception:  # noqa: BLE001 - ml_collections raises KeyError/AttributeError for unknown fields
        message = None if _traceback_in(argv) else _config_override_error(argv)
        if message is None:
            raise
        _print(f"error: {message}")
        sys.exit(USAGE_EXIT)
    if not _traceback_in(argv):
        for name, flag in _config_flags():
            message = _config_file_error(name, flag)
            if message:
                _print(f"error: {message}")
                sys.exit(USAGE_EXIT)
    return rest


def _config_flags():
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if config_flags_module.is_config_flag(flag) and flag.name == name:
            yield name, flag


def _config_file_error(name: str, flag) -> str | None:
    """A one-line message if the config file of ``--name`` could not be loaded (ml_collections defers that
    error to the first use of the config), else None."""
    value = flag.value
    if value is None:
        return None
    try:
        value.keys  # noqa: B018 - any attribute of a config that failed to load raises its OSError
    except OSError as e:
        try:
            path = config_flags.get_config_filename(flag)
        except Exception:  # noqa: BLE001
            path = ""
        if path and not os.path.exists(path):
            return f"--{name}={path}: no such config file; give a get_config() file such as configs/digits.py"
        return f"--{name}={path}: cannot load this config file ({_one_line(str(e.__cause__ or e))})"
    except AttributeError:
        return None
    return None


def _flag_argument(argv: Sequence[str], name: str) -> str | None:
    """The value given to --name on the raw command line (the last one), or None."""
    found = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        bare = arg.lstrip("-")
        if arg.startswith("-") and bare.startswith(name + "="):
            found = bare[len(name) + 1:]
        elif arg.startswith("-") and bare == name and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def _config_override_error(argv: Sequence[str]) -> str | None:
    """After flag parsing raised something other than a flags.Error: if a --<config>.<path> override names a
    field that the config does not have, the one-line message saying so; else None (not explained)."""
    for name, flag in _config_flags():
        file_arg = _flag_argument(argv, name)
        overrides = [a for a in argv[1:] if a.lstrip("-").startswith(name + ".") and a.startswith("-")]
        if file_arg is None or not overrides:
            continue
        try:
            config = flag.parser.parse(file_arg)  # the same get_config() call as the failed parse
        except Exception:  # noqa: BLE001
            return None
        for arg in overrides:
            path = arg.lstrip("-")[len(name) + 1:].split("=", 1)[0]
            message = _unknown_field(config, name, path)
            if message:
                return f"{arg}: {message}"
    return None


def _unknown_field(config, root: str, path: str) -> str | None:
    if "[" in path:  # indexed paths: leave them to ml_collections
        return None
    node, where = config, root
    for part in path.split("."):
        if isinstance(node, Mapping) or hasattr(node, "keys"):
            keys = sorted(str(k) for k in node.keys())
            if part not in keys:
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f' Did you mean "{close[0]}"?' if close else ""
                return (f"unknown config field '{part}' in {where}.{hint} The fields of {where} are: "
                        f"{', '.join(keys)}")
            node = node[part]
        else:
            kind = type(node).__name__
            return (f"{where} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({node!r}), not a group of fields: "
                    f"it has no field '{part}'; set it with --{where}=VALUE")
        where = f"{where}.{part}"
    return None
