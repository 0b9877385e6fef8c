"""Model names become directory names in the repository and Triton's model names."""

import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton.model_name import validate_model_name


@pytest.mark.parametrize("name", ["cnn", "cnn_trt", "Model-2.v1", "_private", "x" * 128])
def test_plain_names_pass_unchanged(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name, words", [
    ("", "model name is empty"),
    ("..", "not a plain directory name"),
    (".hidden", "not a plain directory name"),
    ("a/b", "not a plain directory name"),
    ("a\\b", "not a plain directory name"),
    ("nul\0byte", "not a plain directory name"),
    ("space name", "is not allowed"),
    ("x" * 129, "is not allowed"),
    ("-leading-dash", "is not allowed"),
    ("ok\n", "is not allowed"),  # a trailing line break: the whole name must match, not up to a `$`
])
def test_names_that_are_not_plain_directory_names_are_refused(name, words):
    with pytest.raises(UserError, match=words):
        validate_model_name(name)
