"""`make demo` keeps working: every row of tools/demo.py trains a few steps in this process (the full
demo, one process per row and 300 steps, is `make demo`)."""

import pytest

from tools import demo


@pytest.fixture(scope="module")
def base_state():
    return demo.pretrain(steps=100)


# the compiled row is left to `make demo` (compiling here would add ~20 s; the optimized class is tested by
# test_optimizer_equivalence.py and test_compile.py)
EAGER_ROWS = [i for i, row in enumerate(demo.ROWS) if not row[0].startswith("optimized")]


@pytest.mark.parametrize("index", EAGER_ROWS, ids=[demo.ROWS[i][0] for i in EAGER_ROWS])
def test_every_demo_row_lowers_the_held_out_loss(base_state, index):
    result = demo.train_row(index, base_state, steps=60, compat="fixed")
    assert result["final"] < result["start"], result
    assert result["state_mb"] > 0
