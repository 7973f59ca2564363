"""One exception type for bad input, and the stage runner that turns it into a one-line exit."""

import sys
from collections.abc import Callable, Iterable


class SarcomaSegError(ValueError):
    """Bad input or params: the message names the file, patient or param and what is wrong."""


def choice(name: str, value: object, allowed: Iterable[object]) -> object:
    """Return value if it is one of allowed, else raise naming the param and the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise SarcomaSegError(
            f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}"
        )
    return value


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage main(); a SarcomaSegError becomes one line on stderr and exit code 1."""
    try:
        main()
    except SarcomaSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
