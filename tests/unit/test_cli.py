"""The stage entry point: a usage line with the command to type, and a quiet terminal."""

import logging
import os
import subprocess
import sys

from pipeline import cli, terminal


def test_help_names_the_command_a_user_types():
    """`python -m pipeline.<stage>`: a stage file run as a script would shadow the stdlib."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.augment", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m pipeline.augment ")
    assert "VERBOSE=1" in result.stdout


def test_command_name_of_an_imported_stage():
    from pipeline import train

    assert cli.command_name(train.run) == "python -m pipeline.train"


def test_library_chatter_is_off_unless_verbose(monkeypatch):
    logger = logging.getLogger("mlflow")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setenv("VERBOSE", "1")
    terminal.quiet_libraries()
    assert logger.level == logging.NOTSET
    monkeypatch.delenv("VERBOSE")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    terminal.quiet_libraries()
    assert logger.level == logging.WARNING
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
