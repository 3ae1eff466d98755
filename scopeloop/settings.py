"""Settings from environment variables (one place, documented in .env.example).

Every component reads its settings here so the CLI, the backend, the worker and
docker-compose agree on names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


@dataclass
class Settings:
    home: Path = field(default_factory=lambda: Path(_env("SCOPELOOP_HOME", ".scopeloop")).resolve())
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL", ""))
    label_studio_url: str = field(default_factory=lambda: _env("LABEL_STUDIO_URL", "http://127.0.0.1:8080"))
    label_studio_api_key: str = field(default_factory=lambda: _env("LABEL_STUDIO_API_KEY", ""))
    backend_url: str = field(default_factory=lambda: _env("SCOPELOOP_BACKEND_URL", "http://127.0.0.1:9090"))
    backend_token: str = field(default_factory=lambda: _env("SCOPELOOP_BACKEND_TOKEN", ""))
    device: str = field(default_factory=lambda: _env("SCOPELOOP_DEVICE", ""))

    def project_dir(self, name: str) -> Path:
        return self.home / "projects" / name


def load_settings() -> Settings:
    return Settings()
