"""GenerateConfig validation of the fields probing and validate read (output_dims, input_ranges)."""
import pytest

from aitune_triton.config import GenerateConfig
from aitune_triton.errors import UserError


@pytest.mark.parametrize("field, value, match", [
    ("output_dims", {"boxes": (0, 4)}, "sizes >= 1 or -1"),
    ("output_dims", [(-1, 4)], "must be a dict"),
    ("input_ranges", {"lengths": (5, 1)}, "low <= high"),
    ("input_ranges", {"lengths": 3}, r"give \(low, high\)"),
])
def test_config_fields_are_validated(field, value, match):
    with pytest.raises(UserError, match=match):
        GenerateConfig(**{field: value})


def test_config_fields_round_trip():
    cfg = GenerateConfig(output_dims={"boxes": [-1, 4]}, input_ranges={"lengths": (1, 16)})
    assert cfg.output_dims == {"boxes": (-1, 4)} and cfg.input_ranges == {"lengths": (1.0, 16.0)}
    assert GenerateConfig.from_dict(cfg.to_dict()) == cfg
