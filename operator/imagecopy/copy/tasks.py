"""Concurrent work inside one copy: all of it, or none of it.

``gather_all`` is the copy engine's only way to await several requests at once. It runs
them in an ``asyncio.TaskGroup``, so the first failure cancels the rest (their clean-up,
such as cancelling an open upload session, runs before the failure goes on), and raises one
error, not a group: a permanent one over a transient one, so a copy that failed for a
reason a retry cannot fix says so. ``asyncio.gather`` would leave the siblings running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..oci.errors import ImageCopyError, RegistryError

__all__ = ["first_failure", "gather_all"]

T = TypeVar("T")


async def gather_all(*work: Coroutine[Any, Any, T]) -> list[T]:
    """The results of ``work``, in order; the first failure cancels the rest and is raised
    (``first_failure`` of all that failed meanwhile)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(item) for item in work]
    except BaseExceptionGroup as failures:
        raise first_failure(failures) from None
    return [task.result() for task in tasks]


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a group of failures: a permanent one over a retryable one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, ImageCopyError) and not (
            isinstance(exc, RegistryError) and exc.retryable
        ):
            return exc
    return leaves[0]
