"""Starting / stopping a local Label Studio (the running one comes from the session fixture)."""
from __future__ import annotations

import socket

import pytest
import requests

from ml_backend.labelstudio.server import LabelStudioServer, LabelStudioServerError, free_port

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_running_server_is_healthy_and_token_works(label_studio):
    assert label_studio.healthy()
    r = requests.get(f"{label_studio.url}/api/current-user/whoami",
                     headers={"Authorization": f"Token {label_studio.token}"}, timeout=10)
    assert r.status_code == 200 and r.json()["email"] == label_studio.username


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = LabelStudioServer(data_dir=tmp_path / "ls", document_root=tmp_path, port=port)
        with pytest.raises(LabelStudioServerError, match=f"port {port} .* already in use"):
            server.start()
    assert server.proc is None


def test_crash_during_start_shows_the_log_tail(tmp_path, monkeypatch):
    server = LabelStudioServer(data_dir=tmp_path / "ls", document_root=tmp_path, port=free_port())
    monkeypatch.setattr(server, "command", lambda: ["python3", "-c",
                        "import sys; print('boom: migrations failed'); sys.exit(3)"])
    with pytest.raises(LabelStudioServerError, match="(?s)exited with code 3.*boom: migrations failed"):
        server.start()


def test_env_scrubs_stray_credentials_and_sets_ssrf_switches(tmp_path, monkeypatch):
    monkeypatch.setenv("USERNAME", "someone-else")
    monkeypatch.setenv("PASSWORD", "leaky")
    monkeypatch.setenv("LABEL_STUDIO_PORT", "1234")
    env = LabelStudioServer(data_dir=tmp_path, document_root=tmp_path).env()
    assert "USERNAME" not in env and "PASSWORD" not in env and "LABEL_STUDIO_PORT" not in env
    # SSRF protection stays on (issue 23): nothing exempt unless allow_hosts names the backend's IP
    assert env["ML_BLOCK_LOCAL_IP"] == "true" and env["SSRF_PROTECTION_ENABLED"] == "true"
    assert "USE_DEFAULT_BANNED_SUBNETS" not in env and "USER_ADDITIONAL_BANNED_SUBNETS" not in env
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path)
    with pytest.raises(ValueError, match="longer than 5"):
        LabelStudioServer(data_dir=tmp_path, document_root=tmp_path, token="abc").env()
