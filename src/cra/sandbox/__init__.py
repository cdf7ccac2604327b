"""Running untrusted code: CPython compiled to WebAssembly under wasmtime (:class:`WasmSandbox`),
and the WebAssembly modules of ``wasm`` policies (:func:`load_policy_module`).

The port it implements, :class:`Sandbox`, and the request and result types
live in :mod:`cra.runtime.code` and are offered here too. ``docs/sandbox.md``
states the guarantees and the limits.
"""

from cra.runtime.code import CODE_EXECUTE, CodeExecutor, CodeResult, CodeRun, Limits, Sandbox
from cra.sandbox.artifacts import Artifact, default_cache_dir
from cra.sandbox.policy_module import ModuleVerdict, PolicyModule, load_policy_module
from cra.sandbox.wasm import WasmSandbox

__all__ = [
    "CODE_EXECUTE",
    "Artifact",
    "CodeExecutor",
    "CodeResult",
    "CodeRun",
    "Limits",
    "ModuleVerdict",
    "PolicyModule",
    "Sandbox",
    "WasmSandbox",
    "default_cache_dir",
    "load_policy_module",
]
