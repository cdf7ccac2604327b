"""The command line names the service roles without importing the service; it must name the same ones."""

from cra.cli import _serve
from cra.server.auth import PERMISSIONS, ROLES


def test_the_cli_help_names_every_service_role() -> None:
    assert ", ".join(ROLES) == _serve._ROLES


def test_every_role_has_a_row_in_the_permission_matrix() -> None:
    assert set(PERMISSIONS) == set(ROLES)
    assert PERMISSIONS["agent"] < PERMISSIONS["admin"]
