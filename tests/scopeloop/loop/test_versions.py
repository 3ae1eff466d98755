"""scopeloop.loop.versions: the current head, healed when its file is broken (issue 22)."""
import json

import torch

from scopeloop.loop.versions import current_head
from trainer.store.workspace import Workspace


def _publish_head(ws: Workspace, bias: float) -> str:
    with ws.registry.staging() as tmp:
        torch.save({"weight": torch.zeros(2, 4), "bias": torch.tensor([bias, 0.0])}, tmp / "head.pt")
        (tmp / "config.json").write_text(json.dumps({"classes": ["a", "b"]}))
        (tmp / "provenance.json").write_text(json.dumps({"embedding_space": "space-1"}))
        return ws.registry.publish(tmp)


def test_a_truncated_head_is_set_aside_and_the_previous_version_serves(tmp_path, caplog):
    ws = Workspace(tmp_path)
    _publish_head(ws, 1.0)
    v2 = _publish_head(ws, 2.0)
    head_pt = ws.registry.path(v2) / "head.pt"
    head_pt.write_bytes(head_pt.read_bytes()[:100])  # cut short, not empty: only loading finds it
    head, space = current_head(ws)
    assert space == "space-1" and float(head.bias[0]) == 1.0
    assert ws.registry.current() == "001" and ws.registry.versions() == ["001"]
    assert list(ws.registry.versions_dir.glob("002.bad-*")) and "002" in caplog.text
