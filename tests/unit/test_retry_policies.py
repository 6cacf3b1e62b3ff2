"""Which activity failures the workflows treat as final comes from the error classes."""

from __future__ import annotations

from pylever.contracts import errors
from pylever.contracts.errors import PY_CONTRACT_ERROR, UNKNOWN_ACCOUNT
from workflows.calls import DURABLE_RETRY, FINAL_ERRORS, SETUP_RETRY


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_permanent_api_error_but_a_refused_key_is_final():
    permanent = {errors.PermanentApiError, *_subclasses(errors.PermanentApiError)}
    expected = {cls.__name__ for cls in permanent} - {"AuthError"}  # keys get rotated: retried
    assert set(FINAL_ERRORS) - {PY_CONTRACT_ERROR} == expected
    assert "AuthError" not in FINAL_ERRORS
    assert not {cls.__name__ for cls in _subclasses(errors.RetryableApiError)} & set(FINAL_ERRORS)


def test_setup_calls_also_stop_on_an_unknown_account_durable_ones_do_not_list_it():
    assert SETUP_RETRY.non_retryable_error_types == [*FINAL_ERRORS, UNKNOWN_ACCOUNT]
    assert DURABLE_RETRY.non_retryable_error_types == FINAL_ERRORS
