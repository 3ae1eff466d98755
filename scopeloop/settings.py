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

    def label_studio_client(self, timeout: float = 300.0):
        """The Label Studio API client for these settings (the one place it is built from them);
        `timeout` in s per request."""
        from ml_backend.labelstudio.client import LabelStudioClient

        return LabelStudioClient(self.label_studio_url, self.label_studio_api_key, timeout=timeout)

    def project_dir(self, name: str) -> Path:
        return self.home / "projects" / name  # trainer.store.workspace.PROJECTS_DIR

    def project_names(self) -> list[str]:
        """Names of the projects made by `scopeloop init` / `scopeloop demo` under home."""
        from trainer.store.workspace import project_dirs

        return [d.name for d in project_dirs(self.home)]

    def existing_project(self, name: str | None = None) -> Path:
        """The work directory of project `name`; with no name (or the old default name
        "default" when no project has it), the only project there is.

        Raises FileNotFoundError with what to do: no such project, no project yet, or several
        projects to choose from (listed).
        """
        known = self.project_names()
        if name and name in known:
            return self.project_dir(name)
        if name and name != "default":
            raise FileNotFoundError(f"no project '{name}' in {self.home} (projects: {', '.join(known) or 'none'}); "
                                    "create it with `scopeloop init --images <folder>`, or set SCOPELOOP_HOME")
        if len(known) == 1:
            return self.project_dir(known[0])
        if not known:
            raise FileNotFoundError(f"no project yet in {self.home}: create one with `scopeloop init --images "
                                    "<folder>` or `scopeloop demo`, or set SCOPELOOP_HOME to where your projects are")
        raise FileNotFoundError(f"{len(known)} projects in {self.home} ({', '.join(known)}): choose one with "
                                "--project NAME")


SETTINGS_FILE = "settings.env"


def load_settings() -> Settings:
    """Settings from the environment, completed by <SCOPELOOP_HOME>/settings.env (written by
    `scopeloop demo`), so `scopeloop status` finds the demo's Redis and Label Studio."""
    home = Path(_env("SCOPELOOP_HOME", ".scopeloop")).resolve()
    env_file = home / SETTINGS_FILE
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                os.environ.setdefault(key.strip(), value.strip())
    return Settings()


def write_settings_file(settings: Settings) -> Path:
    path = settings.home / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([
        "# written by `scopeloop demo`: the services it started (environment variables win)",
        f"REDIS_URL={settings.redis_url}",
        f"LABEL_STUDIO_URL={settings.label_studio_url}",
        f"LABEL_STUDIO_API_KEY={settings.label_studio_api_key}",
        f"SCOPELOOP_BACKEND_URL={settings.backend_url}",
        f"LOCAL_FILES_DOCUMENT_ROOT={os.environ.get('LOCAL_FILES_DOCUMENT_ROOT', '')}",
    ]) + "\n")
    path.chmod(0o600)
    return path
