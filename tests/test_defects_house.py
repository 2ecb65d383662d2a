"""Checkpoint files that cannot be used are data errors, reported by the command-line tools."""

import pytest

from salsa_lib.core.checkpoints import load_member
from salsa_lib.errors import DataError
from salsa_lib.stages import evaluation


def test_missing_or_corrupt_checkpoint_files_are_data_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="missing.ckpt does not exist"):
        load_member(tmp_path / "missing.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 cut off mid-download")
    with pytest.raises(DataError, match="corrupt.ckpt is not a readable checkpoint"):
        load_member(corrupt)
    # the command-line tools catch the project's errors and print them without a traceback
    assert evaluation.main(["--checkpoint", str(corrupt), "--data-root", str(tmp_path)]) == 1
    assert "corrupt.ckpt is not a readable checkpoint" in capsys.readouterr().err
