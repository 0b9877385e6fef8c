"""ValidateOptions' checks and the CLI's concurrency parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.validate.options import ValidateOptions, parse_concurrency


def test_options_and_concurrency_parsing():
    assert parse_concurrency("1,2,4,8") == (1, 2, 4, 8)
    assert parse_concurrency("1:8:2") == (1, 3, 5, 7)
    assert parse_concurrency("2:4") == (2, 3, 4)
    for bad, why in (("", "gives no positive values"), ("a,b", "is not a comma list"), ("0,1", "gives no positive")):
        with pytest.raises(UserError, match="concurrency %r %s" % (bad, why)):
            parse_concurrency(bad)
    with pytest.raises(UserError, match="give only one"):
        ValidateOptions(url="127.0.0.1:8000", tritonserver=Path("/x/tritonserver"))
    with pytest.raises(UserError, match="shared memory"):
        ValidateOptions(shared_memory="cuda")
    with pytest.raises(UserError, match="concurrency"):
        ValidateOptions(concurrency=())
    assert ValidateOptions(concurrency=[1, 2]).concurrency == (1, 2)
