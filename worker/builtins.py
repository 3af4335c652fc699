"""The functions a `python` pool can call: the built-ins, plus those its config registers.

A pool's config may register more (`functions: {name: "module:function"}`), which may shadow
these names; a task payload can only name a function, never code to import. Each built-in is
small and predictable so demos and tests can exercise the whole task path:

    echo   returns its first positional argument, else its keyword arguments, else None
    sleep  waits `seconds` (asynchronously, so a timeout cancels it) and returns them
    noop   returns None
    fail   raises RuntimeError with the given message
    add    returns the sum of its numeric arguments
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import ExecutorError

MAX_SLEEP_SECONDS = 7 * 24 * 3600.0


def echo(*args: Any, **kwargs: Any) -> Any:
    """Return the first positional argument (the prompt of a prompt task), else the kwargs."""
    if args:
        return args[0]
    if kwargs:
        return kwargs
    return None


async def sleep(seconds: float | int | str = 0.0) -> float:
    """Sleep for `seconds` (a number, or a numeric string such as a prompt) and return them."""
    if isinstance(seconds, bool):
        raise TypeError("sleep needs a number of seconds, not a bool")
    try:
        delay = float(seconds)
    except (TypeError, ValueError):
        raise TypeError(f"sleep needs a number of seconds, got {seconds!r}") from None
    if not 0.0 <= delay <= MAX_SLEEP_SECONDS:
        raise ValueError(f"sleep seconds must be between 0 and {MAX_SLEEP_SECONDS:g}, got {delay}")
    await asyncio.sleep(delay)
    return delay


def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing and return None, whatever the arguments."""
    return None


def fail(message: str = "task failed on purpose (builtin 'fail')", *args: Any) -> None:
    """Raise RuntimeError with `message`: a task that always fails, for demos and tests."""
    raise RuntimeError(message)


def add(*args: int | float) -> int | float:
    """Return the sum of the numeric arguments (0 when none); reject anything non-numeric."""
    total: int | float = 0
    for index, value in enumerate(args):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"add takes numbers; argument {index} is {value!r}")
        total += value
    return total


BUILTINS: dict[str, Callable[..., Any]] = {
    "echo": echo,
    "sleep": sleep,
    "noop": noop,
    "fail": fail,
    "add": add,
}
"""The built-in functions by the name a `call` task (or `default_function`) uses."""

INLINE: frozenset[Callable[..., Any]] = frozenset({echo, noop, fail, add})
"""Built-ins that are pure and O(1): they run on the event loop, not in a thread."""


def function_table(functions: Mapping[str, str]) -> dict[str, Callable[..., Any]]:
    """The built-ins plus `functions` ({name: "module:function"}, from trusted pool config).

    Each registered function is imported now, so a pool with a bad entry fails when it is
    spawned: ExecutorError names the entry that cannot be imported or is not callable.
    """
    table = dict(BUILTINS)
    for name, target in functions.items():
        module_name, _, attr_path = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr_path.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # importing runs arbitrary module code
            raise ExecutorError(
                f"function {name!r} -> {target!r} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(obj):
            raise ExecutorError(
                f"function {name!r} -> {target!r} is a {type(obj).__name__}, not callable"
            )
        table[name] = obj
    return table
