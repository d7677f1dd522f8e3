"""The randomised differential test's small profile (`make test`): a few derandomized draws of every class in both
modes (`differential.draws`: random documented options, shapes, dtypes, gradient scales, missing gradients and
groups), each checked for crashes, NaN/Inf, lockstep, free-running and resume (`differential.check`). A failing
draw is shrunk to a small one by hypothesis. `make verify` runs the thorough profile (≥ 2,000 draws)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .differential import CLASSES, COMPATS, check, draws


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", CLASSES)
@settings(max_examples=3)
@given(data=st.data())
def test_draws_agree(name, compat, data):
    d = data.draw(draws(classes=(name,), compats=(compat,)))
    assert check(d) == []
