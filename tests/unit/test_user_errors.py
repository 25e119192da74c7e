"""Only the package's own ValueErrors are a user's mistake (one line `error: ...`, no traceback); the
command line itself: tests/integration/test_cli_errors.py."""

import pytest

from pretrain_mm.__main__ import is_user_error
from pretrain_mm.run import check_eval_checkpoint


def test_only_the_packages_own_value_errors_are_user_errors():
    class Cfg:  # the two keys check_eval_checkpoint reads
        mode = "eval"

        class eval:
            checkpoint = "/nope"

    with pytest.raises(ValueError) as raised:
        check_eval_checkpoint(Cfg)
    assert is_user_error(raised.value)
    # A ValueError from a library (here Python's int) is more likely a bug: its traceback stays.
    with pytest.raises(ValueError) as raised:
        int("x")
    assert not is_user_error(raised.value)
    with pytest.raises(KeyError) as raised:
        {}["x"]
    assert not is_user_error(raised.value)
