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


def test_a_full_disk_is_named_with_its_free_space(tmp_path, monkeypatch):
    """Issue 22: the registry's only error on a full disk was torch's "enforce fail at
    inline_container.cc:672"; now every state write says where the disk is full and what is free."""
    import errno
    import shutil
    from collections import namedtuple

    from trainer.store.atomic import DiskFullError
    from trainer.store.registry import ModelRegistry

    target = tmp_path / "predictions" / "003.npz"
    with pytest.raises(DiskFullError, match=r"disk full at .*predictions: free \d+\.\d\d GB"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists() and list(target.parent.iterdir()) == []
    # a writer that hides the errno (torch.save), on a disk with 1 MB free
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**6, 10**6))
    reg = ModelRegistry(tmp_path / "registry")
    with pytest.raises(DiskFullError, match=r"free 0\.00 GB.*enforce fail"):
        with reg.staging():
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    assert reg.versions() == [] and reg.current() is None and not list(reg.root.glob(".staging-*"))
