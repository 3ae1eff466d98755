"""Owner-only files on a machine other people use (issue 23; docs/security.md).

Every scopeloop process (the CLI, the backend's WSGI entry, the children the demo starts, the
Label Studio it starts) runs with the umask SCOPELOOP_UMASK (octal, default 077: folders 0700,
files 0600). A home made before that, readable by others, is tightened on start, with one line
saying so; `scopeloop doctor` (and `status`) warn about a project folder, a state file or a
Label Studio database that other users can read.

On the compose lab server Label Studio runs as another user than the scopeloop containers and
must read the previews: there SCOPELOOP_UMASK=027 lets the group SCOPELOOP_GID (a group of its
own, no person in it) read; other users still read nothing.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

UMASK_ENV = "SCOPELOOP_UMASK"
DEFAULT_UMASK = 0o077
# what `doctor` names when others can read it (beside every project folder)
STATE_FILES = ("demo.json", "settings.env", "backend_token", "starter_labels.csv")
LS_DATABASE = "label_studio.sqlite3"


def private_umask() -> int:
    """The umask scopeloop's processes run with (SCOPELOOP_UMASK, default 077); a setting
    that would let others read (its "other" read bit clear) is not accepted."""
    text = os.environ.get(UMASK_ENV, "").strip()
    try:
        value = int(text, 8) if text else DEFAULT_UMASK
    except ValueError:
        raise ValueError(f"{UMASK_ENV}={text!r}: give an octal umask such as 077 or 027") from None
    if not 0 <= value <= 0o777 or (value & 0o007) != 0o007:
        raise ValueError(f"{UMASK_ENV}={text!r}: other users must get nothing (the last digit must be 7), "
                         "e.g. 077 (owner only) or 027 (owner and group)")
    return value


def apply_umask() -> int:
    """Set this process's umask to `private_umask()`; returns it."""
    value = private_umask()
    os.umask(value)
    return value


def tighten_home(home, log=None) -> int:
    """Make `home` and what is under it owner-only (as the umask says) when it is not: an
    existing home open to others is walked once (links are not followed, paths of other owners
    left alone). Returns the number of paths changed and
    logs one line when it changed some."""
    home = Path(home)
    umask = private_umask()
    try:
        st = home.lstat()
    except OSError:
        return 0   # not there yet: made under the umask when first written
    if st.st_uid != os.getuid() or not (stat.S_IMODE(st.st_mode) & umask):
        return 0   # not ours, or already private: nothing to walk
    changed = 0
    for path in _walk(home):
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode & umask:
                os.chmod(path, mode & ~umask)
                changed += 1
        except OSError:
            continue
    if changed and log is not None:
        log(f"note: {home} was open to other users: {changed} path(s) under it made private "
            f"(umask {umask:03o}; docs/security.md)")
    return changed


def _walk(root: Path):
    yield root
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def readable_by_others(path) -> bool:
    """Whether a user who is neither the owner nor in the group can read `path`: its "other"
    read bit, and the "other" search bit of every folder above it."""
    p = Path(os.path.abspath(path))
    try:
        if not os.stat(p).st_mode & stat.S_IROTH:
            return False
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in p.parents)
    except OSError:
        return False


def ls_databases(home) -> list[Path]:
    """Label Studio databases scopeloop knows of: the demo's, LABEL_STUDIO_BASE_DATA_DIR's, and
    Label Studio's default place."""
    dirs = [Path(home) / "label-studio"]
    for name in ("LABEL_STUDIO_BASE_DATA_DIR", "BASE_DATA_DIR"):
        if os.environ.get(name):
            dirs.append(Path(os.environ[name]))
    dirs.append(Path.home() / ".local" / "share" / "label-studio")
    seen, out = set(), []
    for d in dirs:
        f = (d / LS_DATABASE).resolve()
        if f not in seen and f.is_file():
            seen.add(f)
            out.append(f)
    return out


def exposures(home) -> list[str]:
    """One warning per project folder, state file or Label Studio database others can read."""
    home = Path(home)
    items: list[tuple[Path, str]] = []
    if home.is_dir():
        items.append((home, "scopeloop home"))
        items += [(home / n, "state file") for n in STATE_FILES if (home / n).exists()]
        projects = home / "projects"
        if projects.is_dir():
            items += [(d, "project folder") for d in sorted(projects.iterdir()) if d.is_dir()]
    items += [(f, "Label Studio database (holds the API tokens and every label)") for f in ls_databases(home)]
    out = []
    for path, what in items:
        if readable_by_others(path):
            out.append(f"warning: {what} {path} is readable by other users of this machine: "
                       f"chmod -R go-rwx {path} (scopeloop tightens its home when it starts)")
    return out
