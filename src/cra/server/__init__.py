"""The CRA service: a FastAPI app over the governance service, with API-key auth and tenancy."""

from __future__ import annotations

from cra.server.app import ServerSettings, create_app
from cra.server.auth import PERMISSIONS, ROLES, Identity, Permission
from cra.server.boot import Booted, boot

__all__ = ["PERMISSIONS", "ROLES", "Booted", "Identity", "Permission", "ServerSettings", "boot", "create_app"]
