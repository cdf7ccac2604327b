"""Entry points stay thin (issue #13): the routes call the service, never the state store behind it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cra.server

SERVER = Path(cra.server.__file__).parent
ROUTES = [SERVER / "api.py", *sorted(SERVER.glob("*_api.py"))]


def _reaches_into_state(source: str) -> list[int]:
    """Lines where the code reads ``<something>.service.state`` or ``service.state``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "state":
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            if name == "service":
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("module", ROUTES, ids=lambda path: path.name)
def test_a_route_module_never_reads_the_state_store(module: Path) -> None:
    assert _reaches_into_state(module.read_text("utf-8")) == []


def test_the_check_finds_a_route_that_does() -> None:
    source = "async def f(service):\n    return await service.state.sessions('t')\n"
    assert _reaches_into_state(source) == [2]
    assert _reaches_into_state("async def f(ctx):\n    return ctx.service.state\n") == [2]
    assert _reaches_into_state("def f(request):\n    return request.app.state.started\n") == []
