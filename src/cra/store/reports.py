"""Reports over the service's store, aggregated with Polars.

Every report is a table. The tables (``REPORTS``):

- ``decisions_by_policy``, ``decisions_by_agent``, ``decisions_by_action``, ``decisions_by_day``:
  execute-time policy decisions (the attested ``policy.evaluated`` events) counted
  by that key and by decision (``allow``, ``deny``, ``requires_approval``);
- ``resolutions_by_day``: resolutions by day and decision type;
- ``rates``: decisions, denials and approval requests in all, with the denial and
  approval rates;
- ``approval_latency``: seconds from request to decision, by outcome (count, mean, p50, p90, max);
- ``limit_hits``: rate-limit and budget refusals by policy and kind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import polars as pl

__all__ = ["REPORTS", "build_reports", "render"]

REPORTS: Final = (
    "decisions_by_policy",
    "decisions_by_agent",
    "decisions_by_action",
    "decisions_by_day",
    "resolutions_by_day",
    "rates",
    "approval_latency",
    "limit_hits",
)
_DECISION_COLUMNS: Final = ("timestamp", "event_type", "agent_id", "action_id", "decision", "policy_id", "attested")


def _seconds(start: str, end: str | None) -> float | None:
    if end is None:
        return None
    a = datetime.fromisoformat(start.replace("Z", "+00:00"))
    b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return (b - a).total_seconds()


def build_reports(
    decision_rows: Sequence[tuple[Any, ...]], approval_rows: Sequence[tuple[Any, ...]]
) -> dict[str, pl.DataFrame]:
    """Every report table from the rows :meth:`SqlState.report_rows` returns."""
    import polars as pl

    events = pl.DataFrame(
        [dict(zip(_DECISION_COLUMNS, row, strict=True)) for row in decision_rows],
        schema={
            "timestamp": pl.String,
            "event_type": pl.String,
            "agent_id": pl.String,
            "action_id": pl.String,
            "decision": pl.String,
            "policy_id": pl.String,
            "attested": pl.Boolean,
        },
    ).with_columns(pl.col("timestamp").str.slice(0, 10).alias("day"))
    decisions = events.filter((pl.col("event_type") == "policy.evaluated") & pl.col("attested"))
    resolutions = events.filter(pl.col("event_type") == "carp.resolution.completed")
    violations = events.filter(pl.col("event_type") == "policy.violated")

    def counted(frame: pl.DataFrame, *keys: str) -> pl.DataFrame:
        return frame.group_by([*keys, "decision"]).agg(pl.len().alias("count")).sort([*keys, "decision"])

    total = decisions.height
    denied = decisions.filter(pl.col("decision") == "deny").height
    approvals_asked = decisions.filter(pl.col("decision") == "requires_approval").height
    rates = pl.DataFrame(
        {
            "decisions": [total],
            "denied": [denied],
            "approval_requests": [approvals_asked],
            "denial_rate": [denied / total if total else None],
            "approval_rate": [approvals_asked / total if total else None],
        },
        schema={
            "decisions": pl.Int64,
            "denied": pl.Int64,
            "approval_requests": pl.Int64,
            "denial_rate": pl.Float64,
            "approval_rate": pl.Float64,
        },
    )

    timings = []
    for requested_at, status, action_id, agent_id, data in approval_rows:
        decided_at = json.loads(data).get("decided_at")
        if status in ("approved", "denied", "used"):
            outcome = "denied" if status == "denied" else "approved"
            timings.append(
                {
                    "outcome": outcome,
                    "action_id": action_id,
                    "agent_id": agent_id,
                    "seconds": _seconds(requested_at, decided_at),
                }
            )
    latency_rows = pl.DataFrame(
        timings, schema={"outcome": pl.String, "action_id": pl.String, "agent_id": pl.String, "seconds": pl.Float64}
    )
    latency = (
        latency_rows.group_by("outcome")
        .agg(
            pl.len().alias("count"),
            pl.col("seconds").mean().alias("mean_seconds"),
            pl.col("seconds").quantile(0.5, "nearest").alias("p50_seconds"),
            pl.col("seconds").quantile(0.9, "nearest").alias("p90_seconds"),
            pl.col("seconds").max().alias("max_seconds"),
        )
        .sort("outcome")
    )
    limit_hits = (
        violations.group_by(["policy_id", "decision"])
        .agg(pl.len().alias("count"))
        .rename({"decision": "kind"})
        .sort(["policy_id", "kind"])
    )
    return {
        "decisions_by_policy": counted(decisions, "policy_id"),
        "decisions_by_agent": counted(decisions, "agent_id"),
        "decisions_by_action": counted(decisions, "action_id"),
        "decisions_by_day": counted(decisions, "day"),
        "resolutions_by_day": counted(resolutions, "day"),
        "rates": rates,
        "approval_latency": latency,
        "limit_hits": limit_hits,
    }


def render(frame: pl.DataFrame, fmt: str) -> bytes:
    """One table as CSV or Parquet bytes."""
    import polars as pl

    buffer = io.BytesIO()
    if fmt == "csv":
        # Ids come from atlases and callers: a cell a spreadsheet would run as a formula is quoted.
        quoted = [
            pl.when(pl.col(name).str.contains(r"^[=+\-@\t\r]"))
            .then(pl.lit("'") + pl.col(name))
            .otherwise(pl.col(name))
            .alias(name)
            for name, dtype in frame.schema.items()
            if dtype == pl.String
        ]
        frame.with_columns(quoted).write_csv(buffer)
    elif fmt == "parquet":
        frame.write_parquet(buffer)
    else:
        raise ValueError(f"unknown report format {fmt!r}")
    return buffer.getvalue()
