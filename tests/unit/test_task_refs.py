"""`load_task`: what a task reference that does not import says."""

from __future__ import annotations

import pytest

from quorum.errors import TaskError
from quorum.task import load_task


def test_an_example_that_does_not_import_says_where_the_examples_are() -> None:
    # Opacus installs a top-level `examples` package: outside a checkout the import finds it.
    with pytest.raises(TaskError, match=r"No module named .*source checkout: run from its root"):
        load_task("examples.no_such_example.task:task")


def test_another_module_that_does_not_import_gets_no_such_hint() -> None:
    with pytest.raises(TaskError, match="cannot import module") as caught:
        load_task("no_such_package.task:task")
    assert "checkout" not in str(caught.value)
