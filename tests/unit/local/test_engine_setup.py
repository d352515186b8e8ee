"""The local engine's set-up checks: a local value for every placeholder by its exact name, nothing
guessed, and overrides that must name a function of the definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from recpipe.local.engine import (
    EngineOptions,
    LocalEngine,
    function_placeholder,
    local_substitutions,
    local_values,
)
from recpipe.local.exceptions import LocalEngineError
from workflows.definition import FUNCTIONS, PLACEHOLDERS


def test_every_placeholder_of_the_definition_has_a_local_value_and_no_other() -> None:
    values = local_values(bucket="b", function_names={name: f"local-{name}" for name in FUNCTIONS})
    assert set(values) == set(PLACEHOLDERS)
    assert local_substitutions(PLACEHOLDERS, values)["DataBucket"] == "b"
    assert values[function_placeholder("Prepare")].endswith(":function:local-Prepare")


def test_an_unknown_placeholder_is_an_error_naming_it_not_a_guess() -> None:
    values = local_values(bucket="b", function_names={"Prepare": "p"})
    # "DataBucketName" contains "Bucket" and "PrepareFunctionArnV2" the function's name: neither is
    # one of the names the engine knows, so neither may be filled.
    with pytest.raises(LocalEngineError, match="DataBucketName, PrepareFunctionArnV2"):
        local_substitutions(["DataBucket", "DataBucketName", "PrepareFunctionArnV2"], values)


def test_lambda_overrides_must_name_a_function_of_the_definition(tmp_path: Path) -> None:
    options = EngineOptions(workdir=tmp_path, lambda_overrides={"Publsh": lambda event, context: None})
    with pytest.raises(LocalEngineError, match="Publsh"), LocalEngine(options):
        pass
    assert not (tmp_path / "dynamodb").exists()  # refused before starting anything
