"""The error contract: one exit code per family, and whether a retry may help, derived from the
classes (the flow's retry rule and the docs' table read nothing else)."""

from __future__ import annotations

import pytest

from pipeline.core import errors


def test_every_family_has_its_own_exit_code() -> None:
    families = [c for c in errors._families() if c.__module__ == errors.__name__]
    codes = [c.exit_code for c in families]
    assert len(codes) == len(set(codes)), codes
    assert errors.exit_codes()[12] is errors.DvcRefusal


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(2, False), (3, False), (6, False), (9, False), (10, False), (11, False), (12, False),
     (1, True), (4, True), (5, True), (7, True), (8, True), (137, True), (-9, True)],
)  # fmt: skip
def test_retry_rule_comes_from_the_family(code: int, retryable: bool) -> None:
    assert errors.retryable(code) is retryable


def test_errors_raised_outside_core_are_core_families() -> None:
    """Exit codes 9, 10 and 11 once lived beside their raisers; they are core families now."""
    from pipeline.deploy import device, registry
    from pipeline.orchestration import run

    assert registry.RegistryError is errors.RegistryError
    assert device.DeviceBudgetError is errors.DeviceBudgetError
    assert run.PipelineBusyError is errors.PipelineBusyError


def test_a_missing_extra_names_how_to_install_it() -> None:
    from pipeline.core.extras import require

    require("pytest", "the test suite")  # installed: nothing to say
    with pytest.raises(errors.ConfigError, match="make extras") as err:
        require("tinyops_no_such_package", "federated training")
    assert "federated training needs the Python package 'tinyops_no_such_package'" in str(err.value)
