"""One exception type for bad input, and the runner that turns every anticipated failure of a
command into one line on stderr."""

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable

EXIT_BAD_INPUT = 1
EXIT_SIGINT = 128 + signal.SIGINT  # the shell's convention: 128 + signal number
EXIT_SIGTERM = 128 + signal.SIGTERM


class SarcomaSegError(ValueError):
    """Bad input or params: the message names the file, patient or param and what is wrong."""


class Terminated(BaseException):
    """SIGTERM turned into an exception, so that cleanup (staging folders) runs as for Ctrl-C."""


def choice(name: str, value: object, allowed: Iterable[object]) -> object:
    """Return value if it is one of allowed, else raise naming the param and the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise SarcomaSegError(
            f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}"
        )
    return value


MAX_LINE = 400  # characters of an error line; longer ones (a 100 kB path, say) keep both ends


def brief(line: str, limit: int = MAX_LINE) -> str:
    """A line cut to about `limit` characters: its start and its end (what is wrong) kept."""
    if len(line) <= limit:
        return line
    head, tail = limit * 2 // 3, limit // 3
    return f"{line[:head]} ... ({len(line) - head - tail} characters) ... {line[-tail:]}"


def one_line(exc: BaseException) -> str:
    """A library's error text on one line (nibabel's and h5py's messages span several), or the
    exception's type name where it has no text."""
    return " ".join(str(exc).split()) or type(exc).__name__


def anticipated(exc: BaseException) -> str | None:
    """The one line for a failure that bad or missing input causes, or None for a bug: our own
    errors, OS errors on files (h5py's damaged-file errors are OSErrors too) and broken JSON."""
    if isinstance(exc, SarcomaSegError):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc})"
    if isinstance(exc, OSError):
        # h5py's messages span lines: joined, so that the error stays one line
        reason = " ".join(str(exc.strerror or exc).split()) or type(exc).__name__
        return f"{exc.filename}: {reason}" if exc.filename else reason
    return None


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler: raise, so that finally blocks and except BaseException cleanups run."""
    raise Terminated(signum)


def run_cli(main: Callable[[], None]) -> None:
    """Run a command's main(): an anticipated failure becomes `error: ...` on stderr and exit 1,
    SIGINT exit 130 and SIGTERM exit 143 (after cleanup); anything else keeps its traceback."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_SIGINT) from None
    except Terminated:
        print("error: terminated", file=sys.stderr)
        raise SystemExit(EXIT_SIGTERM) from None
    except Exception as exc:
        line = anticipated(exc)
        if line is None:
            raise
        print(f"error: {brief(line)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
