"""Medians over runs, the targets of issue 4 with PASS/FAIL, and the markdown table."""

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.wrk import Measurement

CEILING = "ceiling"


@dataclass(frozen=True)
class Pair:
    """One run of a scenario and of the ceiling just before it (the machine is shared)."""

    ceiling: Measurement
    measured: Measurement


@dataclass(frozen=True)
class SizeResult:
    """Every run at one directory size: runs[i] maps scenario name to its pair."""

    documents: int
    total_bytes: int
    peak_memory: int
    runs: list[dict[str, Pair]]


@dataclass(frozen=True)
class Row:
    """The medians of one scenario at one size; ratios are taken within each run first."""

    scenario: str
    rps: float
    ratio: float
    p50_ms: float
    p99_ms: float
    p99_ratio: float
    cpu_us: float


def rows(result: SizeResult) -> list[Row]:
    """The ceiling (every run of it), then one row per scenario, in the order they ran."""
    ceilings = [Pair(pair.ceiling, pair.ceiling) for run in result.runs for pair in run.values()]
    scenarios = result.runs[0]
    return [
        _row(CEILING, ceilings),
        *(_row(name, [run[name] for run in result.runs]) for name in scenarios),
    ]


def _row(name: str, pairs: list[Pair]) -> Row:
    def median(value: Callable[[Pair], float]) -> float:
        return statistics.median(value(pair) for pair in pairs)

    return Row(
        scenario=name,
        rps=median(lambda pair: pair.measured.rps),
        ratio=median(lambda pair: pair.measured.rps / pair.ceiling.rps),
        p50_ms=median(lambda pair: pair.measured.p50_ms),
        p99_ms=median(lambda pair: pair.measured.p99_ms),
        p99_ratio=median(lambda pair: pair.measured.p99_ms / pair.ceiling.p99_ms),
        cpu_us=median(lambda pair: pair.measured.cpu_us_per_request),
    )


@dataclass(frozen=True)
class Target:
    """One line of the issue's table: what it checks, at which size, and the verdict."""

    label: str
    documents: int
    measured: str
    passed: bool | None  # None: that size was not run


def _ratio_target(
    label: str, size: int, scenario: str, least: float
) -> Callable[[SizeResult | None], Target]:
    def check(result: SizeResult | None) -> Target:
        if result is None or scenario not in result.runs[0]:
            return Target(label, size, "not run", None)
        ratio = _find(result, scenario).ratio
        return Target(label, size, f"{ratio:.0%}", ratio >= least)

    return check


def _memory_target(result: SizeResult | None) -> Target:
    label = "peak memory < 3x the documents' size"
    if result is None:
        return Target(label, 20000, "not run", None)
    times = result.peak_memory / result.total_bytes
    measured = f"{result.peak_memory / 2**20:.0f} MiB = {times:.1f}x"
    return Target(label, result.documents, measured, times < 3)


def _p99_target(result: SizeResult | None) -> Target:
    label = "list p99 <= 2x ceiling p99"
    if result is None:
        return Target(label, 200, "not run", None)
    ratio = _find(result, "list").p99_ratio
    return Target(label, result.documents, f"{ratio:.2f}x", ratio <= 2)


TARGETS: list[tuple[int, Callable[[SizeResult | None], Target]]] = [
    (200, _ratio_target("list >= 60% of ceiling", 200, "list", 0.60)),
    (2000, _ratio_target("list >= 45% of ceiling", 2000, "list", 0.45)),
    (20000, _ratio_target("list >= 5% of ceiling", 20000, "list", 0.05)),
    (20000, _memory_target),
    (200, _ratio_target("get >= 60% of ceiling", 200, "get", 0.60)),
    (200, _ratio_target("device get >= 70% of ceiling", 200, "device get", 0.70)),
    (200, _ratio_target("device get 304 >= 80% of ceiling", 200, "device get 304", 0.80)),
    (200, _ratio_target("PUT >= 30% of ceiling", 200, "PUT", 0.30)),
    (200, _p99_target),
]


# The PostgreSQL store's (issue 19): the same scenarios, a database round trip per request.
POSTGRES_TARGETS: list[tuple[int, Callable[[SizeResult | None], Target]]] = [
    (size, _ratio_target(f"{name} >= {least:.0%} of ceiling", size, name, least))
    for size in (200, 2000)
    for name, least in (("list", 0.45), ("get", 0.5), ("device get", 0.5), ("PUT", 0.2))
]


def targets(results: dict[int, SizeResult], store: str = "directory") -> list[Target]:
    """Every target of the store, judged on the results of its size."""
    table = POSTGRES_TARGETS if store == "postgres" else TARGETS
    return [check(results.get(size)) for size, check in table]


def _find(result: SizeResult, scenario: str) -> Row:
    return next(row for row in rows(result) if row.scenario == scenario)


def verdict(target: Target) -> str:
    return {True: "PASS", False: "FAIL", None: "SKIP"}[target.passed]


def markdown(results: dict[int, SizeResult], header: str, store: str = "directory") -> str:
    """The results page: the targets, then one table of medians per size."""
    lines = [header, "", "| target | N | measured | verdict |", "|---|---:|---:|---|"]
    for target in targets(results, store):
        lines.append(
            f"| {target.label} | {target.documents} | {target.measured} | {verdict(target)} |"
        )
    for size, result in sorted(results.items()):
        lines += ["", *_size_table(size, result)]
    return "\n".join(lines) + "\n"


def _size_table(size: int, result: SizeResult) -> list[str]:
    memory = f"{result.peak_memory / 2**20:.0f} MiB"
    lines = [
        f"### N = {size} ({result.total_bytes / 2**20:.1f} MiB of documents, peak RSS {memory})",
        "",
        "| scenario | req/s | of ceiling | p50 ms | p99 ms | p99 / ceiling p99 | CPU us/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows(result):
        lines.append(
            f"| {row.scenario} | {row.rps:.0f} | {row.ratio:.0%} | {row.p50_ms:.2f} "
            f"| {row.p99_ms:.2f} | {row.p99_ratio:.2f} | {row.cpu_us:.0f} |"
        )
    return lines
