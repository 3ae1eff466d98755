import json
import multiprocessing as mp
import threading

import pytest

from trainer.store.registry import ModelRegistry, RegistryError

FILES = ["config.json", "head.pt", "metrics.json", "label_map.json"]


def _write_version(reg: ModelRegistry, tag: str, make_current=True) -> str:
    with reg.staging() as tmp:
        for name in FILES:
            (tmp / name).write_text(json.dumps({"tag": tag, "pad": "x" * 200_000}))
        return reg.publish(tmp, make_current=make_current)


def test_publish_numbers_versions_and_switches_current(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.current() is None
    assert _write_version(reg, "a") == "001"
    assert _write_version(reg, "b") == "002" and reg.current() == "002"
    assert _write_version(reg, "c", make_current=False) == "003" and reg.current() == "002"
    assert not list(tmp_path.glob(".staging-*"))


def test_reader_never_sees_a_half_written_version(tmp_path):
    reg = ModelRegistry(tmp_path)
    stop, problems = threading.Event(), []

    def reader():
        while not stop.is_set():
            for v in reg.versions():
                present = {p.name for p in (reg.versions_dir / v).iterdir()}
                if present != set(FILES):
                    problems.append((v, present))
            cur = reg.current()
            if cur is not None and cur not in reg.versions():
                problems.append(("current", cur))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        _write_version(reg, str(i))
    stop.set()
    t.join()
    assert problems == [] and len(reg.versions()) == 30


def _publisher(root, n):
    reg = ModelRegistry(root)
    for i in range(n):
        _write_version(reg, f"{i}")


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_publisher, args=(str(tmp_path), 5)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(ModelRegistry(tmp_path).versions()) == 15


def test_rollback_walks_back_through_served_versions_only(tmp_path):
    reg = ModelRegistry(tmp_path)
    _write_version(reg, "a")
    _write_version(reg, "held", make_current=False)
    _write_version(reg, "c")
    assert reg.current() == "003"
    assert reg.rollback() == "001"  # 002 was never served
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    with pytest.raises(RegistryError, match="does not exist"):
        reg.set_current("042")


def test_empty_publish_refused(tmp_path):
    reg = ModelRegistry(tmp_path)
    with reg.staging() as tmp, pytest.raises(RegistryError, match="empty"):
        reg.publish(tmp)


def test_held_back_candidates_are_pruned_but_served_versions_kept(tmp_path):
    reg = ModelRegistry(tmp_path)
    _write_version(reg, "served", make_current=True)  # 001
    for i in range(5):
        reg.publish(_stage(reg, f"held{i}"), make_current=False, record={"labels": i})  # 002..006
    pruned = reg.prune_candidates(keep=2)
    assert pruned == ["002", "003", "004"]
    assert reg.versions() == ["001", "005", "006"] and reg.current() == "001"
    assert [r["version"] for r in reg.version_log()] == ["002", "003", "004", "005", "006"]  # the curve remembers
    assert not list(tmp_path.glob(".pruned-*"))
    reg.set_current("005", "promoted by hand")
    assert reg.prune_candidates(keep=0) == ["006"] and reg.versions() == ["001", "005"]
    # numbers of pruned versions are never reused
    assert reg.publish(_stage(reg, "next"), make_current=False, record={}) == "007"


def _stage(reg, tag):
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=reg.root))
    (tmp / "head.pt").write_text(tag)
    return tmp


# ---------------------------------------------------------------- issue 22: bad state files heal

def _served_three(tmp_path):
    reg = ModelRegistry(tmp_path)
    for tag in "abc":
        _write_version(reg, tag)  # 001, 002, 003 each served
    _write_version(reg, "held", make_current=False)  # 004: a held-back candidate
    return reg


@pytest.mark.parametrize("content, why", [(b"", "is empty"), (b"\x00\xffjunk", "not a version number"),
                                          (b"042\n", "cannot be served")])
def test_bad_current_is_set_aside_and_the_newest_served_version_serves(tmp_path, caplog, content, why):
    reg = _served_three(tmp_path)
    (tmp_path / "current").write_bytes(content)
    assert reg.current() == "003"  # served before; 004 was held back
    assert (tmp_path / "current").read_text() == "003\n"
    aside = list(tmp_path.glob("current.bad-*"))
    assert len(aside) == 1 and why in caplog.text and aside[0].name in caplog.text
    assert reg.history()[-1]["reason"].startswith("healed")
    assert reg.current() == "003" and len(list(tmp_path.glob("current.bad-*"))) == 1  # healed once


def test_a_version_with_an_empty_model_file_is_not_served(tmp_path):
    reg = _served_three(tmp_path)
    (reg.versions_dir / "003" / "head.pt").write_bytes(b"")  # a 0-byte head.pt (disk full, kill -9)
    assert reg.current() == "002"
    assert "head.pt is empty" in reg.problem("003")
    with pytest.raises(RegistryError, match="refusing to serve"):
        reg.set_current("003")


def test_mark_bad_sets_the_version_aside_and_never_reuses_its_number(tmp_path):
    reg = ModelRegistry(tmp_path)
    _write_version(reg, "a")
    _write_version(reg, "b")
    assert reg.mark_bad("002", "head.pt truncated") == "001"
    assert reg.versions() == ["001"] and list(reg.versions_dir.glob("002.bad-*"))
    with reg.staging() as tmp:
        (tmp / "head.pt").write_text("c")
        assert reg.publish(tmp) == "003"


def test_rollback_to_a_named_version(tmp_path):
    reg = _served_three(tmp_path)
    assert reg.rollback("1") == "001" and reg.current() == "001"
    assert reg.history()[-1]["reason"] == "rollback from 003 to 001"
    with pytest.raises(RegistryError, match="does not exist"):
        reg.rollback("009")


def test_a_cut_short_history_line_is_skipped(tmp_path):
    reg = _served_three(tmp_path)
    with open(tmp_path / "promotions.jsonl", "a") as f:
        f.write('{"version": "00')  # a write cut short by a full disk
    assert [h["version"] for h in reg.history()] == ["001", "002", "003"]
    assert reg.rollback() == "002"
    assert [h["version"] for h in reg.history()] == ["001", "002", "003", "002"]
