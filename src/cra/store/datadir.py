"""The data directory: where CRA keeps its state on one machine.

``--data-dir`` wins, then ``$CRA_DATA_DIR``, then the per-user data directory
(``$XDG_DATA_HOME/cra``, ``~/.local/share/cra``; ``~/Library/Application
Support/cra`` on macOS; ``%LOCALAPPDATA%\\cra`` on Windows). ``cra serve`` uses
the same directory.

    <data dir>/
      ledger.sqlite3        the audit log (entries, Merkle hashes, checkpoints, attestations),
                            unless the service's database is PostgreSQL: then the log is there
      keys/keyring.json     the log's origin and its keys' public halves and roles
      keys/<key id>.key     each signing key (mode 0600, in a mode-0700 directory)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cra.runtime.ledger import AuditLedger
from cra.runtime.ports import Clock, LedgerStore
from cra.store.keys import Keyring, KeyringWatch
from cra.store.ledger import SqliteLedgerStore

__all__ = ["default_data_dir", "open_ledger", "resolve_data_dir"]


def default_data_dir() -> Path:
    """The per-user data directory for this platform."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "cra"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "cra"
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share") / "cra"


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``$CRA_DATA_DIR``, else :func:`default_data_dir`."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CRA_DATA_DIR")
    return Path(env).expanduser() if env else default_data_dir()


def open_ledger(
    data_dir: str | Path,
    *,
    create: bool = False,
    clock: Clock | None = None,
    checkpoint_every: int = 1000,
    checkpoint_interval: float = 1.0,
    database_url: str | None = None,
) -> AuditLedger:
    """The audit ledger of a data directory, signed by its keyring's active keys.

    With ``create``, a directory without keys gets a new log origin and key. The log
    itself is ``ledger.sqlite3`` in the directory, unless ``database_url`` names a
    PostgreSQL database: then it is kept there (:class:`~cra.store.sql_ledger.SqlLedgerStore`),
    shared by every process and machine that uses that database.
    """
    root = Path(data_dir)
    keyring = Keyring(root / "keys")
    if create and not keyring.exists:
        keyring.generate()
    origin = keyring.origin
    signers, retired = keyring.signers(), keyring.retired()
    store: LedgerStore
    if database_url and _is_postgresql(database_url):
        from cra.store.sql_ledger import SqlLedgerStore  # SQLAlchemy loads only for a database URL

        store = SqlLedgerStore(database_url, origin=origin)
    else:
        store = SqliteLedgerStore(root / "ledger.sqlite3", origin=origin)
    try:
        return AuditLedger(
            store,
            signers,
            origin=origin,
            clock=clock,
            checkpoint_every=checkpoint_every,
            checkpoint_interval=checkpoint_interval,
            retired=retired,
            keys=KeyringWatch(keyring),
        )
    except BaseException:
        store.close()
        raise


def _is_postgresql(database_url: str) -> bool:
    from sqlalchemy.engine import make_url  # not at the top: `import cra` and the CLI start without SQLAlchemy

    return make_url(database_url).get_backend_name() == "postgresql"
