"""The guest side of ``cra build-wasm``: CRA's engine inside CPython compiled to WebAssembly.

componentize-py imports this module at build time and snapshots the
interpreter, so the warm-up calls below compile every schema and validator
once, into the component, instead of on every call. Files are readable only
then, so every time zone is loaded now too, and kept: ``ZoneInfo(name)``
returns a live instance from its cache without reading anything.
"""

import json
import zoneinfo

import wit_world

from cra.runtime.portable import evaluate_json, resolve_json

_ZONES = {name: zoneinfo.ZoneInfo(name) for name in zoneinfo.available_timezones()}

_WARM_ATLAS = {
    "atlas_version": "1.0",
    "atlas_id": "org.cra.warmup",
    "version": "1.0.0",
    "name": "Warm-up",
    "description": "Compiled at build time so that calls start warm",
    "actions": [{"action_id": "warm.up", "name": "Warm up", "description": "Nothing"}],
    "policies": [{"policy_id": "allow-all", "type": "allow", "actions": ["*"]}],
}
evaluate_json(
    json.dumps({"atlas": _WARM_ATLAS, "now": "2024-01-01T00:00:00Z", "requests": [{"agent": "a", "action": "warm.up"}]})
)
resolve_json(
    json.dumps(
        {
            "atlases": [_WARM_ATLAS],
            "request": {
                "carp_version": "1.0",
                "request_id": "00000000-0000-7000-8000-000000000000",
                "timestamp": "2024-01-01T00:00:00Z",
                "operation": "resolve",
                "requester": {"agent_id": "a", "session_id": "00000000-0000-7000-8000-000000000000"},
                "task": {"goal": "warm up"},
            },
        }
    )
)


def _internal(exc: BaseException) -> str:
    message = f"{type(exc).__name__} inside the engine component"
    return json.dumps({"error": {"code": "internal", "message": message}}, sort_keys=True, separators=(",", ":"))


class WitWorld(wit_world.WitWorld):
    def evaluate(self, input: str) -> str:
        try:
            return evaluate_json(input)
        except BaseException as exc:  # noqa: BLE001 - an escaping exception would abort the runtime
            return _internal(exc)

    def resolve(self, input: str) -> str:
        try:
            return resolve_json(input)
        except BaseException as exc:  # noqa: BLE001 - an escaping exception would abort the runtime
            return _internal(exc)
