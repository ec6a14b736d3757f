"""The demo's emissions-reporting agents and DAG.

intake → validation → (scope 1 ‖ scope 2) → aggregation → report.

Where it sits: the agents are entry points `emissions.*` of group `gl_orchestrator.agents` (see
pyproject.toml), so any registry built with `AgentRegistry.from_entry_points()` has them; the watchdog
demo registers `emissions_dag()` and executes it on `emissions_demo_input()`.

The calculations are small but real: scope 1 multiplies fuel quantities by combustion factors,
scope 2 multiplies purchased electricity by grid-region factors that it fetches from an "external
emission-factor API" (simulated in process, with latency). That lookup is the demo's failure: with
`params.hang_first_attempt`, the connection opened by the first attempt wedges (it lives in the agent
worker's state, `ctx.state["connection"]`), the call never returns and the run stalls at the scope level
— the runbook's stuck execution. A retry on the same worker reuses the wedged connection and hangs
again; restarting the agent worker (`AgentRegistry.restart("emissions.scope2")`) drops the state and
interrupts the attempt with `AgentRestarted`, and the retry opens a healthy connection. While waiting,
the agent logs `external call emission-factor-api GET /factors ... waiting` lines (diagnostic step 7).

Factors are illustrative values in kg CO2e per unit (rounded published averages), not for reporting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from orchestrator_core.agents import AgentContext
from orchestrator_core.errors import AgentError

# kg CO2e per unit of fuel burned (illustrative).
SCOPE1_FACTORS: dict[str, float] = {
    "natural_gas_m3": 2.02,
    "diesel_l": 2.68,
    "petrol_l": 2.31,
    "lpg_l": 1.56,
}

# kg CO2e per kWh of purchased electricity by grid region (illustrative), served by the fake API.
GRID_FACTORS: dict[str, float] = {
    "US-CAMX": 0.225,
    "US-ERCT": 0.373,
    "EU-DE": 0.364,
    "EU-FR": 0.056,
    "UK": 0.207,
}

EMISSION_FACTOR_API = "emission-factor-api"


def _upstream(ctx: AgentContext, node_id: str) -> dict[str, Any]:
    value = ctx.upstream.get(node_id)
    if not isinstance(value, dict):
        raise AgentError(f"{ctx.node_id} needs the output of {node_id}, got {type(value).__name__}")
    return value


async def intake(ctx: AgentContext) -> Any:
    """Load the facilities' activity data from the run's input and normalise it."""
    data = ctx.input_data
    if not isinstance(data, dict) or not isinstance(data.get("facilities"), list):
        raise AgentError("input_data must be an object with a 'facilities' list")
    facilities = []
    for index, raw in enumerate(data["facilities"]):
        if not isinstance(raw, dict):
            raise AgentError(f"facilities[{index}] must be an object")
        facilities.append(
            {
                "facility_id": str(raw.get("facility_id", f"facility-{index + 1}")),
                "name": str(raw.get("name", "")),
                "fuel": dict(raw.get("fuel") or {}),
                "electricity_kwh": raw.get("electricity_kwh", 0),
                "grid_region": raw.get("grid_region"),
            }
        )
    ctx.log(
        f"intake loaded {len(facilities)} facilities for {data.get('organization', 'unknown organisation')}"
    )
    return {
        "organization": data.get("organization", ""),
        "reporting_year": data.get("reporting_year"),
        "facilities": facilities,
    }


async def validation(ctx: AgentContext) -> Any:
    """Check units, signs and regions; invalid data fails the node (not retryable)."""
    intake_out = _upstream(ctx, "intake")
    errors: list[str] = []
    warnings: list[str] = []
    for facility in intake_out["facilities"]:
        fid = facility["facility_id"]
        for fuel, amount in facility["fuel"].items():
            if fuel not in SCOPE1_FACTORS:
                errors.append(f"{fid}: unknown fuel {fuel!r}")
            elif not isinstance(amount, int | float) or amount < 0:
                errors.append(f"{fid}: {fuel} must be a non-negative number")
        kwh = facility["electricity_kwh"]
        if not isinstance(kwh, int | float) or kwh < 0:
            errors.append(f"{fid}: electricity_kwh must be a non-negative number")
        elif kwh > 0 and facility["grid_region"] is None:
            errors.append(f"{fid}: electricity without grid_region")
        if not facility["fuel"] and not kwh:
            warnings.append(f"{fid}: no activity data")
    if errors:
        raise AgentError("validation failed: " + "; ".join(errors))
    return {**intake_out, "warnings": warnings}


async def scope1(ctx: AgentContext) -> Any:
    """Direct emissions: fuel quantity * combustion factor, per facility (kg CO2e)."""
    validated = _upstream(ctx, "validation")
    by_facility = {}
    for facility in validated["facilities"]:
        total = sum(SCOPE1_FACTORS[fuel] * amount for fuel, amount in facility["fuel"].items())
        by_facility[facility["facility_id"]] = round(total, 3)
    return {"by_facility_kg": by_facility, "total_kg": round(sum(by_facility.values()), 3)}


@dataclass
class _Connection:
    """A connection of the scope 2 agent worker to the emission-factor API."""

    wedged: bool
    requests: int = 0
    never: asyncio.Event = field(default_factory=asyncio.Event)


async def _lookup_factors(ctx: AgentContext, regions: list[str]) -> dict[str, float]:
    connection = ctx.state.get("connection")
    if not isinstance(connection, _Connection):
        wedge = bool(ctx.params.get("hang_first_attempt", False)) and ctx.attempt == 1
        connection = _Connection(wedged=wedge)
        ctx.state["connection"] = connection
    connection.requests += 1
    query = ",".join(regions)
    ctx.log(
        f"external call {EMISSION_FACTOR_API} GET /factors?regions={query} "
        f"attempt {ctx.attempt}: waiting for response",
        external=EMISSION_FACTOR_API,
    )
    if connection.wedged:
        interval = float(ctx.params.get("log_interval_seconds", 5.0))
        waited = 0.0
        while not connection.never.is_set():
            await asyncio.sleep(interval)
            waited += interval
            ctx.log(
                f"external call {EMISSION_FACTOR_API} GET /factors still waiting after {waited:.0f}s "
                "(no response, connection not closed)",
                level="WARNING",
                external=EMISSION_FACTOR_API,
            )
    await asyncio.sleep(float(ctx.params.get("latency_seconds", 0.05)))
    missing = [region for region in regions if region not in GRID_FACTORS]
    if missing:
        raise AgentError(f"{EMISSION_FACTOR_API} has no factor for region(s) {', '.join(missing)}")
    ctx.log(f"external call {EMISSION_FACTOR_API} GET /factors returned {len(regions)} factors")
    return {region: GRID_FACTORS[region] for region in regions}


async def scope2(ctx: AgentContext) -> Any:
    """Indirect emissions from purchased electricity: kWh * grid factor from the external API."""
    validated = _upstream(ctx, "validation")
    regions = sorted({f["grid_region"] for f in validated["facilities"] if f["grid_region"]})
    factors = await _lookup_factors(ctx, regions) if regions else {}
    by_facility = {}
    for facility in validated["facilities"]:
        region = facility["grid_region"]
        kwh = facility["electricity_kwh"]
        by_facility[facility["facility_id"]] = round(kwh * factors[region], 3) if region else 0.0
    return {
        "by_facility_kg": by_facility,
        "total_kg": round(sum(by_facility.values()), 3),
        "factors": factors,
    }


async def aggregation(ctx: AgentContext) -> Any:
    """Scope 1 + scope 2 per facility and in total, in tonnes CO2e."""
    s1 = _upstream(ctx, "scope1")
    s2 = _upstream(ctx, "scope2")
    facilities = sorted(set(s1["by_facility_kg"]) | set(s2["by_facility_kg"]))
    rows = {
        fid: {
            "scope1_t": round(s1["by_facility_kg"].get(fid, 0.0) / 1000, 3),
            "scope2_t": round(s2["by_facility_kg"].get(fid, 0.0) / 1000, 3),
        }
        for fid in facilities
    }
    for row in rows.values():
        row["total_t"] = round(row["scope1_t"] + row["scope2_t"], 3)
    return {
        "by_facility": rows,
        "scope1_t": round(s1["total_kg"] / 1000, 3),
        "scope2_t": round(s2["total_kg"] / 1000, 3),
        "total_t": round((s1["total_kg"] + s2["total_kg"]) / 1000, 3),
    }


async def report(ctx: AgentContext) -> Any:
    """A short Markdown report of the totals."""
    totals = _upstream(ctx, "aggregation")
    data = ctx.input_data if isinstance(ctx.input_data, dict) else {}
    title = f"GHG emissions {data.get('organization', '')} {data.get('reporting_year', '')}".strip()
    lines = [
        f"# {title}",
        "",
        "| facility | scope 1 (t) | scope 2 (t) | total (t) |",
        "| --- | --- | --- | --- |",
    ]
    for fid, row in totals["by_facility"].items():
        lines.append(f"| {fid} | {row['scope1_t']} | {row['scope2_t']} | {row['total_t']} |")
    lines += [
        "",
        f"Total: {totals['total_t']} t CO2e (scope 1 {totals['scope1_t']}, scope 2 {totals['scope2_t']})",
    ]
    return {"title": title, "totals": totals, "markdown": "\n".join(lines)}


def emissions_dag(
    *,
    dag_id: str = "emissions-report",
    hang_scope2: bool = True,
    execution_timeout_seconds: float = 5.0,
    node_timeout_seconds: float = 300.0,
    log_interval_seconds: float = 5.0,
) -> dict[str, Any]:
    """The demo DAG document. With `hang_scope2`, scope 2's first attempt wedges (see module doc).

    The DAG-level timeout is short (the demo wants the stuck-run alert soon); node timeouts are long, so
    the hung node stays `running` and the run stalls at its level until someone acts, as in the runbook.
    """
    retry = {
        "max_retries": 3,
        "strategy": "exponential",
        "base_delay": 0.2,
        "max_delay": 2.0,
        "jitter": True,
        "retryable_exceptions": ["ConnectionError", "TimeoutError", "ServiceUnavailable"],
    }
    timeout = {"timeout_seconds": node_timeout_seconds, "on_timeout": "fail"}

    def node(agent: str, deps: list[str], params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "agent_id": f"emissions.{agent}",
            "depends_on": deps,
            "params": params or {},
            "timeout_policy": timeout,
            "retry_policy": retry,
        }

    return {
        "dag_id": dag_id,
        "description": "Annual GHG emissions report: intake, validation, scope 1 and 2, aggregation, report",
        "execution_timeout_seconds": execution_timeout_seconds,
        "on_failure": "fail_fast",
        "nodes": {
            "intake": node("intake", []),
            "validation": node("validation", ["intake"]),
            "scope1": node("scope1", ["validation"]),
            "scope2": node(
                "scope2",
                ["validation"],
                {"hang_first_attempt": hang_scope2, "log_interval_seconds": log_interval_seconds},
            ),
            "aggregation": node("aggregation", ["scope1", "scope2"]),
            "report": node("report", ["aggregation"]),
        },
    }


def emissions_demo_input() -> dict[str, Any]:
    """Activity data of three facilities for the demo run."""
    return {
        "organization": "GreenLang Demo Manufacturing",
        "reporting_year": 2025,
        "facilities": [
            {
                "facility_id": "plant-berlin",
                "name": "Berlin assembly",
                "fuel": {"natural_gas_m3": 120000, "diesel_l": 8000},
                "electricity_kwh": 2400000,
                "grid_region": "EU-DE",
            },
            {
                "facility_id": "plant-lyon",
                "name": "Lyon machining",
                "fuel": {"natural_gas_m3": 45000},
                "electricity_kwh": 1800000,
                "grid_region": "EU-FR",
            },
            {
                "facility_id": "dc-austin",
                "name": "Austin distribution centre",
                "fuel": {"diesel_l": 22000, "lpg_l": 3000},
                "electricity_kwh": 950000,
                "grid_region": "US-ERCT",
            },
        ],
    }
