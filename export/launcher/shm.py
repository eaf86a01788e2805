"""Shared-memory regions of the Python backend: our naming scheme, and sweeping what dead servers left.

Each stub maps a ``/dev/shm`` region; a server killed with SIGKILL (or a crashed test run) leaves its
regions behind, and on a small ``/dev/shm`` the next server then fails to start. Every server this
launcher starts names its regions with the launcher's pid, so a sweep can tell a dead owner from a
live one.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# The Python backend names each stub's region <prefix><uuid>; this is its default prefix.
SHM_DEFAULT_PREFIX = "triton_python_backend_shm_region_"
# Our per-server prefix keeps the default one as a stem (so one glob finds every region) and adds the
# launcher's pid, which tells whether a region can still have an owner.
_SHM_OURS = re.compile(re.escape(SHM_DEFAULT_PREFIX) + r"ads(?P<pid>\d+)x(?P<token>[0-9a-f]{8})_")
# A region with a foreign prefix is only removed once unmapped for this long: between shm_open and
# mmap in a starting server it is briefly unmapped but not stale.
_FOREIGN_SHM_GRACE_S = 30.0


def our_prefix() -> str:
    """A region-name prefix for one server of this launcher: the default stem, our pid, a random token."""
    return f"{SHM_DEFAULT_PREFIX}ads{os.getpid()}x{secrets.token_hex(4)}_"


def is_our_prefix(prefix: str) -> bool:
    """Whether ``prefix`` is one :func:`our_prefix` made (so only its server used it)."""
    return _SHM_OURS.fullmatch(prefix) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie launcher is dead for our purpose: its server already got PDEATHSIG.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# /proc/<pid>/comm is truncated to 15 characters.
_TRITON_COMMS = {"tritonserver", "triton_python_backend_stub"[:15]}


def _shm_names_in_use(shm_dir: Path) -> tuple[set[str], set[int]]:
    """Names under ``shm_dir`` mapped or open in any process, and the uids of Triton processes we could not inspect."""
    in_use: set[str] = set()
    unreadable_uids: set[int] = set()
    marker = str(shm_dir).rstrip("/") + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    idx = line.find(marker)
                    if idx >= 0:
                        in_use.add(line[idx + len(marker):].rstrip("\n").removesuffix(" (deleted)"))
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(marker):
                    in_use.add(target[len(marker):])
        except FileNotFoundError:
            continue  # exited while we looked
        except PermissionError:
            # Other unreadable processes (a sandbox's init, another user's shell) cannot own
            # backend regions; an unreadable Triton process might, so its uid's regions stay.
            try:
                if (proc / "comm").read_text().strip() in _TRITON_COMMS:
                    unreadable_uids.add(proc.stat().st_uid)
            except OSError:
                pass
        except OSError:
            continue
    return in_use, unreadable_uids


def remove_stale_shm_regions(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Delete Python-backend shm regions whose server is gone (e.g. killed with SIGKILL).

    A region is kept if any live process maps or holds it open, if its name carries the pid of a
    live launcher (our naming scheme), if a Triton process of its owner could not be inspected, or
    if it has a foreign name and was touched recently. Returns the removed paths.
    """
    try:
        candidates = [p for p in shm_dir.iterdir() if p.name.startswith(SHM_DEFAULT_PREFIX)]
    except OSError:
        return []
    if not candidates:
        return []
    in_use, unreadable_uids = _shm_names_in_use(shm_dir)
    removed = []
    now = time.time()
    for path in candidates:
        if path.name in in_use:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_uid in unreadable_uids:
            continue
        match = _SHM_OURS.match(path.name)
        if match:
            if _pid_alive(int(match["pid"])):
                continue
        elif now - st.st_mtime < _FOREIGN_SHM_GRACE_S:
            continue
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except PermissionError:
            continue
    return removed


def remove_regions_with_prefix(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    removed = []
    try:
        paths = [p for p in shm_dir.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed

