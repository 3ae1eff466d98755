"""Atomic writes: a reader sees the old file or the new one; a failed write leaves no temp file."""
import json

import numpy as np
import pytest

from trainer.store.atomic import atomic_path, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "predictions" / "003.npz"
    with atomic_path(target) as tmp:
        np.savez(tmp, probs=np.ones(3))
    assert np.load(target)["probs"].sum() == 3
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")
    assert np.load(target)["probs"].sum() == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["003.npz"]


def test_text_and_json_replace_whole_files(tmp_path):
    write_text_atomic(tmp_path / "current", "002\n")
    write_json_atomic(tmp_path / "status.json", {"a": 1})
    write_text_atomic(tmp_path / "current", "003\n")
    assert (tmp_path / "current").read_text() == "003\n"
    assert json.loads((tmp_path / "status.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "status.json"]
