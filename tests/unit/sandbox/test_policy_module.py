"""WebAssembly policy modules (cra.sandbox.policy_module): real wasmtime, real modules, no mocks.

The modules are the WAT files in ``tests/fixtures/policy_modules`` plus a few written inline
for one edge case each. Expected verdicts come from the rules the modules state, or from an
independent Python oracle of ``allow_small.wat``'s rule, never from running the code under test.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import PolicyError
from cra.policy.modules import DEFAULT_DEADLINE_MS, MAX_FUEL
from cra.sandbox import policy_module
from cra.sandbox.policy_module import MAX_ANSWER_BYTES, MAX_REQUEST_BYTES, ModuleVerdict, PolicyModule

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "policy_modules"
BOTH_PATHS = pytest.mark.parametrize("checked", [False, True], ids=["fast", "checked"])


def wat(name: str) -> str:
    return (FIXTURES / f"{name}.wat").read_text(encoding="utf-8")


def load(name: str, **options: Any) -> PolicyModule:
    return PolicyModule.load(wat(name), **options)


def benign(verdict: ModuleVerdict) -> bool:
    """Whether this is the answer every hostile fixture gives to the request ``{}``, as their headers say."""
    return (verdict.allow, verdict.reason, verdict.failure) == (True, "benign", None) and verdict.fuel_used > 0


def answer_module(answer: bytes, *, at: int = 16, memory_pages: int = 1) -> str:
    """WAT for a module that answers ``answer`` (a data segment at ``at``) to every request."""
    escaped = "".join(f"\\{b:02x}" for b in answer)
    return f"""
    (module
      (memory (export "memory") {memory_pages})
      (data (i32.const {at}) "{escaped}")
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "evaluate") (param i32 i32) (result i64)
        (i64.or (i64.shl (i64.const {at}) (i64.const 32)) (i64.const {len(answer)}))))
    """


def evaluate_returning(result: str, *, alloc: str = "(i32.const 1024)", body: str = "") -> str:
    """WAT for a module whose evaluate runs ``body`` then returns the i64 expression ``result``."""
    return f"""
    (module
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) {alloc})
      (func (export "evaluate") (param i32 i32) (result i64) {body} {result}))
    """


# -- the oracle of allow_small.wat ---------------------------------------------------------------------------------

ALWAYS = "refund.small is always allowed"
NEITHER = "neither action refund.small nor a numeric amount below 1000"
MALFORMED = "the request is not well-formed JSON"


def oracle(doc: dict[str, Any]) -> tuple[bool, str]:
    """allow_small.wat's rule, over the parsed top-level object (the JSON text of the amount for its reason)."""
    if doc.get("action") == "refund.small":
        return True, ALWAYS
    amount = doc.get("amount")
    if isinstance(amount, int | float) and not isinstance(amount, bool):
        text = json.dumps(amount)
        shown = text[:32]
        if "e" in text or "E" in text:
            return False, f"amount {shown} is not a plain decimal number"
        if amount < 1000:
            return True, f"amount {shown} is below 1000"
        return False, f"amount {shown} is not below 1000"
    return False, NEITHER


@pytest.fixture(scope="module")
def echoes() -> tuple[PolicyModule, PolicyModule]:
    return load("echo"), load("echo", checked=True)


@pytest.fixture(scope="module")
def fast() -> PolicyModule:
    return load("allow_small")


@pytest.fixture(scope="module")
def checked() -> PolicyModule:
    return load("allow_small", checked=True)


def test_the_fast_path_is_the_one_under_test(fast: PolicyModule, checked: PolicyModule) -> None:
    """With the pinned wasmtime, checked=False really takes the unchecked path (else these tests prove less)."""
    assert policy_module._FAST_PATH_AVAILABLE
    assert isinstance(fast._instance, policy_module._FastInstance)
    assert not isinstance(checked._instance, policy_module._FastInstance)


# -- allow_small.wat: a real policy --------------------------------------------------------------------------------


@BOTH_PATHS
@pytest.mark.parametrize(
    ("request_text", "allow", "reason"),
    [
        ('{"action":"refund.small"}', True, ALWAYS),
        ('{"action" : "refund.small" , "amount": 5000}', True, ALWAYS),
        ('{"amount":999}', True, "amount 999 is below 1000"),
        ('{"amount": 999.99}', True, "amount 999.99 is below 1000"),
        ('{"amount":-3.5,"action":"refund.large"}', True, "amount -3.5 is below 1000"),
        ('{"amount":1000}', False, "amount 1000 is not below 1000"),
        ('{"amount":1000.0001}', False, "amount 1000.0001 is not below 1000"),
        ('{"amount":1e2}', False, "amount 1e2 is not a plain decimal number"),
        ('{"amount":"12"}', False, NEITHER),
        ('{"amount":null,"action":"refund.smaller"}', False, NEITHER),
        ("{}", False, NEITHER),
        ('{"params":{"action":"refund.small","amount":1}}', False, NEITHER),
        ('{"note":"\\"action\\":\\"refund.small\\"","x":"\\"amount\\":1"}', False, NEITHER),
        ('{"amount":5,"amount":5000}', False, "amount 5000 is not below 1000"),
        ('{"action":"refund.small","action":"refund.large"}', False, NEITHER),
        ('{"amount":' + "9" * 40 + "}", False, "amount " + "9" * 32 + " is not below 1000"),
        ('{"action":"refund.small', False, MALFORMED),
        ('{"action":"refund.small"}}', False, MALFORMED),
        ('{"action":"refund.small"', False, MALFORMED),
    ],
)
def test_allow_small_follows_its_rule(request_text: str, allow: bool, reason: str, checked: bool) -> None:
    module = load("allow_small", checked=checked)
    verdict = module.evaluate(request_text.encode())
    assert (verdict.allow, verdict.reason, verdict.failure) == (allow, reason, None)
    assert verdict.fuel_used > 0


JSONValue = Any
ACTIONS = st.one_of(
    st.sampled_from(["refund.small", "refund.smal", "refund.small ", "Refund.small", "refund.large", "pay.read"]),
    st.text(max_size=16),
)
AMOUNTS = st.one_of(
    st.integers(),
    st.integers(min_value=900, max_value=1100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=999.0, max_value=1001.0),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
)
DECOYS = st.sampled_from(['"action":"refund.small"', '"amount":1', '\\"amount\\": 5', "{[", "]}", "\\", '"'])
NESTED = st.fixed_dictionaries({"action": st.just("refund.small"), "amount": st.just(1)})
EXTRA_VALUES = st.one_of(st.text(max_size=24), DECOYS, st.integers(), NESTED, st.lists(NESTED, max_size=2))
EXTRA_KEYS = st.one_of(st.text(max_size=8), st.sampled_from(["Action", "amounts", "act", "actions"]))


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    items: list[tuple[str, JSONValue]] = []
    if draw(st.booleans()):
        items.append(("action", draw(ACTIONS)))
    if draw(st.booleans()):
        items.append(("amount", draw(AMOUNTS)))
    extras = draw(st.dictionaries(EXTRA_KEYS.filter(lambda k: k not in ("action", "amount")), EXTRA_VALUES, max_size=4))
    items.extend(extras.items())
    doc = dict(draw(st.permutations(items)))
    compact = draw(st.booleans())
    text = json.dumps(
        doc,
        ensure_ascii=draw(st.booleans()),
        separators=(",", ":") if compact else (" , ", " : "),
    )
    return text.encode("utf-8"), doc


@settings(max_examples=300, deadline=None)
@given(requests())
def test_allow_small_agrees_with_its_oracle_on_both_paths(
    fast: PolicyModule, checked: PolicyModule, generated: tuple[bytes, dict[str, Any]]
) -> None:
    request, doc = generated
    verdict = fast.evaluate(request)
    assert (verdict.allow, verdict.reason) == oracle(doc)
    assert verdict.failure is None
    assert checked.evaluate(request) == verdict  # the same verdict and the same fuel


def test_same_request_same_fuel_across_calls_and_loads(fast: PolicyModule) -> None:
    request = b'{"action":"refund.create","amount":420,"note":"one two three"}'
    first = fast.evaluate(request)
    again = [fast.evaluate(request) for _ in range(5)]
    fresh = load("allow_small").evaluate(request)
    assert all(v == first for v in again)
    assert fresh == first
    assert first.fuel_used > 0


def test_fuel_grows_with_the_work(fast: PolicyModule) -> None:
    short = fast.evaluate(b'{"amount":5}')
    long = fast.evaluate(b'{"note":"' + b"x" * 2000 + b'","amount":5}')
    assert (short.allow, long.allow) == (True, True)
    assert long.fuel_used > short.fuel_used + 2000  # at least a unit a byte for the scan


@BOTH_PATHS
def test_the_fuel_budget_is_per_call_and_exhausting_it_denies(checked: bool) -> None:
    module = load("allow_small", fuel=3000, checked=checked)
    small = b'{"amount":5}'
    needs = module.evaluate(small)
    assert needs.failure is None
    assert needs.fuel_used < 3000
    # Each call gets the whole budget again: many calls in a row all fit.
    assert [module.evaluate(small) for _ in range(20)] == [needs] * 20
    big = b'{"note":"' + b"x" * 5000 + b'","amount":5}'
    verdict = module.evaluate(big)
    assert (verdict.allow, verdict.failure, verdict.fuel_used) == (False, "out_of_fuel", 3000)
    assert "ran out of fuel in evaluate" in verdict.reason
    assert module.evaluate(small) == needs


# -- hostile modules -----------------------------------------------------------------------------------------------

HOSTILE = [
    ("trap", "trap", ["trapped in evaluate", "unreachable"]),
    ("loop", "out_of_fuel", ["ran out of fuel in evaluate"]),
    ("memory_hog", "memory", ["used all the memory it may have (16777216 bytes)", "outside the module's"]),
    ("bad_pointer", "bad_pointer", ["0x7fff0000", "outside the module's 65536-byte memory"]),
    ("bad_json", "bad_json", ["not JSON"]),
    ("wrong_shape", "bad_shape", ['"allow" or "deny"', '"maybe"']),
    ("bad_alloc", "bad_pointer", ["alloc(16) returned 0xfffc", "do not fit"]),
]


@BOTH_PATHS
@pytest.mark.parametrize(("name", "failure", "fragments"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_module_ends_as_an_explained_deny(
    name: str, failure: str, fragments: list[str], checked: bool
) -> None:
    good_before = load("allow_small", checked=checked)
    module = load(name, checked=checked)
    never_failed = load(name, checked=checked).evaluate(b"{}")
    assert benign(never_failed)
    hostile_request = b'{"amount": 5555}'
    assert len(hostile_request) == 16  # bad_alloc's message names the length

    verdict = module.evaluate(hostile_request)
    assert not verdict.allow
    assert verdict.failure == failure
    for fragment in fragments:
        assert fragment in verdict.reason

    # The same loaded module still answers as one that never failed, and misbehaves again the same way.
    assert module.evaluate(b"{}") == never_failed
    assert module.evaluate(hostile_request) == verdict
    assert module.evaluate(b"{}") == never_failed
    # Good modules, loaded before and after, are unaffected.
    for good in (good_before, load("allow_small", checked=checked)):
        answer = good.evaluate(b'{"amount":7}')
        assert (answer.allow, answer.reason, answer.failure) == (True, "amount 7 is below 1000", None)


def test_out_of_fuel_uses_exactly_the_budget() -> None:
    verdict = load("loop", fuel=12_345).evaluate(b"[1]")
    assert (verdict.failure, verdict.fuel_used) == ("out_of_fuel", 12_345)
    assert "budget 12345" in verdict.reason


@BOTH_PATHS
def test_memory_growth_stops_at_the_cap(checked: bool) -> None:
    cap = 1024 * 1024
    module = load("memory_hog", memory_bytes=cap, checked=checked)
    verdict = module.evaluate(b"[1]")
    assert verdict.failure == "memory"
    # The answer pointer is the end of the memory: the cap exactly, so the memory grew to it and no further.
    assert f"at {cap:#x}" in verdict.reason
    assert f"({cap} bytes)" in verdict.reason
    assert benign(module.evaluate(b"{}"))


@BOTH_PATHS
@pytest.mark.parametrize(
    ("module_wat", "failure", "fragments"),
    [
        (evaluate_returning("(i64.const -1)"), "bad_pointer", ["0xffffffff", "outside"]),
        (evaluate_returning("(i64.const 0xffffffff)"), "bad_pointer", ["4294967295 bytes at 0x0"]),
        (evaluate_returning("(i64.const 0x0000ffff00000002)"), "bad_pointer", ["2 bytes at 0xffff"]),
        (evaluate_returning("(i64.const 0)", alloc="(i32.const 0)"), "bad_pointer", ["null pointer"]),
        (evaluate_returning("(i64.const 0)", alloc="(i32.const -4)"), "bad_pointer", ["0xfffffffc"]),
        (evaluate_returning("(i64.const 0)", alloc="(unreachable)"), "trap", ["trapped in alloc (unreachable)"]),
        (
            evaluate_returning("(i64.const 0)", body="(drop (i32.load (i32.const 0x7ffffff0)))"),
            "trap",
            ["memory_out_of_bounds", "out of bounds memory access"],
        ),
        (
            evaluate_returning("(i64.extend_i32_s (i32.div_s (i32.const 1) (i32.sub (local.get 1) (local.get 1))))"),
            "trap",
            ["integer_division_by_zero"],
        ),
        (
            """(module (memory (export "memory") 1)
                 (func (export "alloc") (param i32) (result i32) (i32.const 1024))
                 (func $deep (param i32) (result i64) (call $deep (local.get 0)))
                 (func (export "evaluate") (param i32 i32) (result i64) (call $deep (local.get 0))))""",
            "trap",
            ["stack_overflow"],
        ),
        (answer_module(b"x" * (MAX_ANSWER_BYTES + 1), memory_pages=2), "too_large", ["65537 bytes"]),
    ],
    ids=[
        "minus-one",
        "huge-length",
        "straddles-end",
        "null-alloc",
        "alloc-past-end",
        "alloc-traps",
        "load-out-of-bounds",
        "divide-by-zero",
        "stack-overflow",
        "answer-too-large",
    ],
)
def test_edge_cases_of_pointers_and_traps(module_wat: str, failure: str, fragments: list[str], checked: bool) -> None:
    module = PolicyModule.load(module_wat, checked=checked)
    verdict = module.evaluate(b'{"a":1}')
    assert (verdict.allow, verdict.failure) == (False, failure)
    for fragment in fragments:
        assert fragment in verdict.reason
    assert module.evaluate(b'{"a":1}') == verdict


@BOTH_PATHS
def test_an_answer_that_ends_exactly_at_the_end_of_memory_is_read(checked: bool) -> None:
    answer = b'{"decision":"deny","reason":"edge"}'
    module = PolicyModule.load(answer_module(answer, at=65536 - len(answer)), checked=checked)
    verdict = module.evaluate(b"{}")
    assert (verdict.allow, verdict.reason, verdict.failure) == (False, "edge", None)


def test_a_store_stays_usable_after_a_trap_in_wasmtime_itself() -> None:
    """The wasmtime behaviour the design relies on and checks: a trap does not poison the store."""
    config = wasmtime.Config()
    config.consume_fuel = True
    store = wasmtime.Store(wasmtime.Engine(config))
    store.set_fuel(10_000)
    module = wasmtime.Module(
        store.engine,
        '(module (func (export "f") (param i32) (result i32) (if (local.get 0) (then unreachable)) (i32.const 7)))',
    )
    f = wasmtime.Instance(store, module, []).exports(store)["f"]
    assert isinstance(f, wasmtime.Func)
    with pytest.raises(wasmtime.Trap) as trapped:
        f(store, 1)
    assert trapped.value.trap_code is wasmtime.TrapCode.UNREACHABLE
    assert f(store, 0) == 7


@BOTH_PATHS
def test_state_lives_between_good_calls_and_is_reset_after_a_failure(checked: bool) -> None:
    # Its reason tells the parity of the number of earlier calls; it traps on any 3-byte request.
    module_wat = """
    (module
      (memory (export "memory") 1)
      (global $calls (mut i32) (i32.const 0))
      (data (i32.const 16) "{\\"decision\\":\\"allow\\",\\"reason\\":\\"even\\"}")
      (data (i32.const 64) "{\\"decision\\":\\"deny\\",\\"reason\\":\\"odd!\\"}")
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "evaluate") (param i32 i32) (result i64)
        (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
        (if (i32.eq (local.get 1) (i32.const 3)) (then unreachable))
        (select (i64.const 0x0000001000000024) (i64.const 0x0000004000000023)
          (i32.and (global.get $calls) (i32.const 1)))))
    """
    module = PolicyModule.load(module_wat, checked=checked)
    assert [module.evaluate(b"{}").reason for _ in range(2)] == ["even", "odd!"]
    assert module.evaluate(b"[1]").failure == "trap"  # the third call: an unreset counter would say odd next
    assert [module.evaluate(b"{}").reason for _ in range(2)] == ["even", "odd!"]  # a fresh instance


# -- the answer ----------------------------------------------------------------------------------------------------


@BOTH_PATHS
@pytest.mark.parametrize(
    ("answer", "failure", "expected"),
    [
        (b'{"decision":"allow","reason":"ok"}', None, "ok"),
        (b'{ "reason" : "no" , "decision" : "deny" }', None, "no"),
        (b'{"decision":"deny","reason":""}', None, ""),
        ('{"decision":"allow","reason":"café ✓"}'.encode(), None, "café ✓"),
        (b'{"decision":"allow","reason":"caf\\u00e9 \\ud83d\\ude00"}', None, "café \U0001f600"),
        ('{"decision":"allow","reason":"x"}'.encode("utf-16"), "bad_json", "not UTF-8"),
        (b'{"decision":"allow","reason":"\xff"}', "bad_json", "not UTF-8"),
        (b'\xef\xbb\xbf{"decision":"allow","reason":"bom"}', "bad_json", "not JSON"),
        (b"", "bad_json", "not JSON"),
        (b'{"decision":"allow","reason":"ok"} trailing', "bad_json", "not JSON"),
        (b"[" * 60_000, "bad_json", "nests too deeply"),
        (b'{"decision":"allow","reason":' + b"1" * 5000 + b"}", "bad_json", "not JSON"),
        (b'{"decision":"allow","reason":"\\ud800"}', "bad_json", "unpaired surrogate"),
        (b'[{"decision":"allow","reason":"ok"}]', "bad_shape", "a JSON array, not an object"),
        (b'"allow"', "bad_shape", "a JSON string, not an object"),
        (b"null", "bad_shape", "a JSON null, not an object"),
        (b'{"decision":"allow"}', "bad_shape", "lacks reason"),
        (b"{}", "bad_shape", "lacks decision and reason"),
        (b'{"decision":"allow","reason":"ok","policy":"x"}', "bad_shape", 'other than decision and reason: "policy"'),
        (b'{"decision":"Allow","reason":"ok"}', "bad_shape", 'not "Allow"'),
        (b'{"decision":true,"reason":"ok"}', "bad_shape", "not true"),
        (b'{"decision":["allow"],"reason":"ok"}', "bad_shape", 'not ["allow"]'),
        (b'{"decision":"allow","reason":["ok"]}', "bad_shape", "not a JSON array"),
        (b'{"decision":"allow","reason":null}', "bad_shape", "not a JSON null"),
        (b'{"decision":"deny","reason":"a","decision":"allow"}', "bad_shape", "repeats a key"),
        (b'{"decision":"deny","reason":"a","decisio\\u006e":"allow"}', "bad_shape", "repeats a key"),
        (b'{"decision":"deny","reason":"a","reason":"b"}', "bad_shape", "repeats a key"),
    ],
)
def test_the_answer_must_be_exactly_a_decision_and_a_reason(
    answer: bytes, failure: str | None, expected: str, checked: bool
) -> None:
    # echo.wat answers with the request, so the request is the answer under test.
    module = load("echo", checked=checked)
    verdict = module.evaluate(answer)
    assert verdict.failure == failure
    if failure is None:
        assert verdict.reason == expected
        assert verdict.allow == (json.loads(answer)["decision"] == "allow")
    else:
        assert not verdict.allow
        assert expected in verdict.reason
    assert module.evaluate(answer) == verdict  # a judged answer comes out the same the second time


ANSWER_VALUES = st.one_of(
    st.sampled_from(["allow", "deny", "Allow", "DENY", "maybe", ""]),
    st.text(max_size=12),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.just("allow"), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["decision", "reason", "Decision", "policy", "reasons"]), ANSWER_VALUES, max_size=4
    ),
    st.booleans(),
)
def test_answers_are_accepted_exactly_when_they_have_the_abi_shape(
    echoes: tuple[PolicyModule, PolicyModule], answer: dict[str, Any], ascii_only: bool
) -> None:
    text = json.dumps(answer, ensure_ascii=ascii_only).encode()
    well_formed = (
        set(answer) == {"decision", "reason"}
        and answer["decision"] in ("allow", "deny")
        and isinstance(answer["decision"], str)
        and isinstance(answer["reason"], str)
    )
    for module in echoes:
        verdict = module.evaluate(text)
        if well_formed:
            assert (verdict.allow, verdict.reason, verdict.failure) == (
                answer["decision"] == "allow",
                answer["reason"],
                None,
            )
        else:
            assert (verdict.allow, verdict.failure) == (False, "bad_shape")


LOADABLE = ["allow_small", "echo", "trap", "loop", "memory_hog", "bad_pointer", "bad_json", "wrong_shape", "bad_alloc"]
PROBES = [b"{}", b"[1]", b'{"amount":5}', b'{"decision":"allow","reason":"echoed"}', b"", b'{"action":"refund.small"}']


@pytest.mark.parametrize("name", LOADABLE)
def test_the_fast_and_checked_paths_give_identical_verdicts_and_fuel(name: str) -> None:
    fast_module = load(name, memory_bytes=1 << 20)
    checked_module = load(name, memory_bytes=1 << 20, checked=True)
    for request in PROBES * 2:
        assert fast_module.evaluate(request) == checked_module.evaluate(request), request


def test_requests_above_the_cap_are_denied_without_calling_the_module() -> None:
    module = load("allow_small", fuel=100_000_000)
    fits = b'{"amount":1,"pad":"' + b"x" * (MAX_REQUEST_BYTES - 40) + b'"}'
    assert len(fits) <= MAX_REQUEST_BYTES
    assert module.evaluate(fits).allow
    too_big = b" " * (MAX_REQUEST_BYTES + 1)
    verdict = module.evaluate(too_big)
    assert verdict == ModuleVerdict(False, verdict.reason, 0, "request_too_large")
    assert str(MAX_REQUEST_BYTES + 1) in verdict.reason
    assert module.evaluate(b'{"amount":1}').allow


def test_a_request_that_alloc_cannot_fit_under_the_memory_cap_is_denied() -> None:
    module = load("allow_small", memory_bytes=256 * 1024)
    verdict = module.evaluate(b'{"amount":1,"pad":"' + b"x" * (300 * 1024) + b'"}')
    assert (verdict.allow, verdict.failure) == (False, "bad_pointer")
    assert "null pointer" in verdict.reason
    assert module.evaluate(b'{"amount":1}').allow


def test_a_request_must_be_bytes(fast: PolicyModule) -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        fast.evaluate('{"amount":1}')  # type: ignore[arg-type]


# -- loading -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        (wat("imports"), ["import nothing", "env.log (function)"]),
        (wat("no_alloc"), ["does not export alloc"]),
        ('(module (memory (export "memory") 1))', ["does not export alloc, evaluate"]),
        (
            '(module (func (export "alloc") (param i32) (result i32) (i32.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))',
            ["does not export memory"],
        ),
        (
            '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i32) (i32.const 0)))',
            ["'evaluate'", "(i32, i32) -> i64", "(i32, i32) -> i32"],
        ),
        (
            '(module (memory (export "memory") 1) (func (export "alloc") (param i64) (result i32) (i32.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))',
            ["'alloc'", "(i32) -> i32", "(i64) -> i32"],
        ),
        (
            '(module (global (export "memory") i32 (i32.const 0)) '
            '(func (export "alloc") (param i32) (result i32) (i32.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))',
            ["'memory' must be a memory, not a global"],
        ),
        (
            wat("trap").replace("(module", "(module (memory $second 1)", 1),
            ["does not compile", "multiple memories"],  # the engine disables multi-memory: one memory per module
        ),
        (
            wat("trap").replace("(module", "(module (table 20000 funcref)", 1),
            ["cannot be instantiated", "table"],
        ),
        (
            '(module (memory (export "memory") i64 1) (func (export "alloc") (param i32) (result i32) (i32.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))',
            ["'memory' must be a 32-bit memory"],
        ),
        (
            '(module (memory (export "memory") 1) (global (export "alloc") i32 (i32.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))',
            ["'alloc' must be a function, not a global"],
        ),
        ("(module (func", ["does not compile", "(at <anon>:1:"]),
        (b"\x00asm\x01\x00\x00\x00garbage", ["does not compile", "failed to parse WebAssembly module"]),
        (
            '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i64.const 0)) '
            '(func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))',
            ["does not compile", "type mismatch"],
        ),
        (wat("allow_small").replace('(memory (export "memory") 1)', '(memory (export "memory") 300)'), ["cap"]),
        (
            wat("trap").replace("(module", "(module (func $boom unreachable) (start $boom)", 1),
            ["cannot be instantiated", "start function", "unreachable"],
        ),
        (
            wat("trap").replace("(module", "(module (func $spin (loop $l (br $l))) (start $spin)", 1),
            ["cannot be instantiated", "ran out of fuel in its start function"],
        ),
    ],
    ids=[
        "imports",
        "no-alloc",
        "only-memory",
        "no-memory",
        "evaluate-returns-i32",
        "alloc-takes-i64",
        "memory-is-a-global",
        "two-memories",
        "table-over-limit",
        "memory64",
        "alloc-is-a-global",
        "wat-syntax",
        "bad-binary",
        "invalid-code",
        "memory-over-cap",
        "start-traps",
        "start-loops",
    ],
)
def test_load_refuses_with_a_message_naming_the_problem(source: str | bytes, fragments: list[str]) -> None:
    with pytest.raises(PolicyError) as refused:
        PolicyModule.load(source)
    assert refused.value.path == ""
    for fragment in fragments:
        assert fragment in refused.value.reason


def test_a_start_function_within_budget_is_fine() -> None:
    source = wat("trap").replace("(module", "(module (func $init) (start $init)", 1)
    assert benign(PolicyModule.load(source).evaluate(b"{}"))


@pytest.mark.parametrize(("fuel", "memory_bytes"), [(0, 1 << 20), (-1, 1 << 20), (True, 1 << 20), (1000, 0)])
def test_load_refuses_nonsense_limits(fuel: int, memory_bytes: int) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        PolicyModule.load(wat("allow_small"), fuel=fuel, memory_bytes=memory_bytes)


def test_sha256_is_of_the_bytes_as_given_and_binary_equals_text() -> None:
    text = wat("allow_small")
    binary = bytes(wasmtime.wat2wasm(text))
    from_text = PolicyModule.load(text)
    from_binary = PolicyModule.load(binary)
    from_text_bytes = PolicyModule.load(text.encode())
    assert from_text.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert from_text_bytes.sha256 == from_text.sha256
    assert from_binary.sha256 == hashlib.sha256(binary).hexdigest() != from_text.sha256
    for request in (b'{"amount":3}', b'{"amount":3000}', b'{"action":"refund.small"}'):
        assert from_binary.evaluate(request) == from_text.evaluate(request)


# -- the deadline --------------------------------------------------------------------------------------------------

#: The most fuel a wasm policy could set before issue #12 (finding 4): loop.wat took 2.3 s a call with it.
OLD_MOST_FUEL = 1_000_000_000
SPIN_AT_START = "(module (func $spin (loop $l (br $l))) (start $spin)"
GROW_AT_START = "(module (func $spin (loop $l (drop (memory.grow (i32.const 0))) (br $l))) (start $spin)"


@BOTH_PATHS
def test_a_loop_with_the_old_most_fuel_is_stopped_at_its_deadline(checked: bool) -> None:
    module = load("loop", fuel=OLD_MOST_FUEL, checked=checked)
    verdict = module.evaluate(b"[1]")
    assert (verdict.allow, verdict.failure) == (False, "deadline")
    assert verdict.reason == f"the policy module ran past its deadline of {DEFAULT_DEADLINE_MS} ms in evaluate"
    assert benign(module.evaluate(b"{}"))  # a fresh instance, as after any failure


@BOTH_PATHS
def test_fuel_does_not_bound_time_and_the_deadline_does(checked: bool) -> None:
    # slow.wat's loop costs little fuel and much time: the most fuel a policy may set would last seconds.
    module = load("slow", fuel=MAX_FUEL, deadline_ms=20, checked=checked)
    verdict = module.evaluate(b"[1]")
    assert (verdict.allow, verdict.failure) == (False, "deadline")
    assert verdict.reason == "the policy module ran past its deadline of 20 ms in evaluate"
    assert verdict.fuel_used < MAX_FUEL
    again = module.evaluate(b"[1]")  # its fuel_used depends on the machine, so only the rest is compared
    assert (again.allow, again.reason, again.failure) == (False, verdict.reason, "deadline")
    assert benign(module.evaluate(b"{}"))


@BOTH_PATHS
def test_the_deadline_covers_alloc_too(checked: bool) -> None:
    module = PolicyModule.load(
        evaluate_returning("(i64.const 0)", alloc="(loop $l (br $l)) (i32.const 0)"),
        fuel=OLD_MOST_FUEL,
        checked=checked,
    )
    verdict = module.evaluate(b"{}")
    assert (verdict.failure, verdict.reason) == (
        "deadline",
        f"the policy module ran past its deadline of {DEFAULT_DEADLINE_MS} ms in alloc",
    )


@pytest.mark.parametrize(
    ("start", "fuel", "deadline_ms"),
    [(SPIN_AT_START, OLD_MOST_FUEL, DEFAULT_DEADLINE_MS), (GROW_AT_START, MAX_FUEL, 20)],
    ids=["spin", "grow"],
)
def test_a_start_function_that_loops_is_refused_at_its_deadline(start: str, fuel: int, deadline_ms: int) -> None:
    with pytest.raises(PolicyError) as refused:
        PolicyModule.load(wat("trap").replace("(module", start, 1), fuel=fuel, deadline_ms=deadline_ms)
    assert refused.value.path == ""
    assert refused.value.reason == (
        f"the module cannot be instantiated: the policy module ran past its deadline of {deadline_ms} ms "
        "in its start function"
    )


@BOTH_PATHS
def test_every_call_gets_the_whole_deadline_again(checked: bool) -> None:
    """The deadline is set before each call, from the epoch as it is then: epochs that passed between
    calls (here advanced by hand, far past the deadline) do not count against the next call."""
    module = load("allow_small", checked=checked)
    engine = policy_module._shared_engine()
    expected = module.evaluate(b'{"amount":7}')
    assert expected.failure is None
    for _ in range(3):
        for _ in range(1000):
            engine.increment_epoch()
        assert module.evaluate(b'{"amount":7}') == expected


def test_the_ticker_runs_only_while_a_call_runs() -> None:
    """Every way in and out of a call or an instantiation leaves the ticker as it found it."""
    load("loop", fuel=OLD_MOST_FUEL).evaluate(b"[1]")  # a deadline
    load("loop", fuel=1000).evaluate(b"[1]")  # out of fuel
    load("trap").evaluate(b"[1]")  # a trap
    load("allow_small").evaluate(b'{"amount":7}')  # an answer
    with pytest.raises(PolicyError):
        PolicyModule.load(wat("trap").replace("(module", SPIN_AT_START, 1), fuel=OLD_MOST_FUEL)
    assert policy_module._ticker._active == 0


@pytest.mark.parametrize("deadline_ms", [0, -1, True, 2.5])
def test_load_refuses_nonsense_deadlines(deadline_ms: int) -> None:
    with pytest.raises(ValueError, match="deadline_ms must be a positive integer"):
        PolicyModule.load(wat("allow_small"), deadline_ms=deadline_ms)


# -- threads -------------------------------------------------------------------------------------------------------


def test_one_module_shared_by_threads_gives_every_thread_the_right_answers() -> None:
    module = load("allow_small")
    requests = [json.dumps({"amount": amount, "n": "x" * (amount % 50)}).encode() for amount in range(950, 1050)]
    expected = [load("allow_small", checked=True).evaluate(r) for r in requests]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for k in range(len(requests) * 3):
            i = (k + offset) % len(requests)
            got = module.evaluate(requests[i])
            if got != expected[i]:
                errors.append(f"request {i}: {got} != {expected[i]}")

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [(v.allow, v.reason) for v in expected] == [oracle(json.loads(r)) for r in requests]
    assert sum(v.allow for v in expected) == 50  # amounts 950..999
