"""`./pdmw run bench-search`: a filtered list against the unfiltered list (issue 21: at
N = 20,000, at least 0.5 of it).

For each store (the directory; PostgreSQL too when its binaries are installed, as the tests
find them): N realistic documents (bench/documents.py) with one of five `deviceModel`s, the
service as deployed (`python -m quart_iot`), then `--runs` rounds in which each search is
measured with wrk right after the unfiltered list (the machine is shared: each ratio is taken
within its pair, then the median of the rounds). Then single requests, medians of five: a
filter asked for the first time (evaluated over every document), and a filtered list right
after a PUT of a device it selects (brought up to date from that change). And the server's
resident memory once every search has been asked. Writes bench/results/search.md and .json.
"""

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from bench.__main__ import WORK, save_results
from bench.rql import MODELS, devices
from bench.server import BenchServer, peak_memory
from bench.wrk import CONNECTIONS, Measurement, Scenario, require_wrk, run_wrk
from quart_iot.documents import dump_document

T = TypeVar("T")
TARGET = 0.5
# (name, query): from a selective filter to every device with fields, whose body is larger
# than the list's.
SEARCHES = [
    ("filter, 1 in 5", {"filter": 'eq(deviceModel,"relay_board")'}),
    ("filter, 4 in 5", {"filter": 'ne(deviceModel,"relay_board")'}),
    (
        "filter and fields",
        {
            "filter": 'and(eq(deviceModel,"relay_board"),ne(mqtt/host,"broker.lan"))',
            "fields": "mqtt/host,enableOTA",
        },
    ),
    ("fields, every device", {"fields": "mqtt/host,enableOTA"}),
]
LIST = Scenario("list", "/api/configs")
SINGLE = 5  # single requests per figure (medians)


@dataclass(frozen=True)
class Pair:
    """One round of one search: the unfiltered list, then the search right after it."""

    listing: Measurement
    search: Measurement


@dataclass(frozen=True)
class StoreResult:
    """Every figure of one store."""

    store: str
    documents: int
    selected: dict[str, int]
    rounds: list[dict[str, Pair]]
    first_ms: float  # a filter asked for the first time
    live_idle: tuple[float, float]  # liveness p50, p99 (ms) alone
    live_first: tuple[float, float]  # ... while filters are asked for the first time
    after_put_ms: float  # a filtered list right after a PUT of a device it selects
    list_after_put_ms: float  # the unfiltered list right after a PUT
    rss_before: int  # resident memory before any search, and once every search was asked
    rss_after: int
    peak_rss: int


def path_of(query: dict[str, str]) -> str:
    return "/api/configs?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def resident(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def fill(directory: Path, count: int) -> None:
    """The documents, each with a model, as the service stores them."""
    for mac, document in devices(count):
        (directory / f"{mac}.json").write_bytes(dump_document(document))


def timed_get(server: BenchServer, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{server.url}{path}", timeout=120) as response:
        body = response.read()
    return (time.perf_counter() - started) * 1000, body


def liveness(server: BenchServer, until: threading.Event) -> list[float]:
    """Latencies (ms) of sequential liveness probes until `until` is set."""
    found = []
    while not until.is_set():
        found.append(timed_get(server, "/api/health/live")[0])
    return found


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def while_probing(server: BenchServer, work: Callable[[], T]) -> tuple[T, tuple[float, float]]:
    """work(), and the liveness latencies meanwhile."""
    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        probes = pool.submit(liveness, server, done)
        try:
            result = work()
        finally:
            done.set()
        return result, percentiles(probes.result())


def put(server: BenchServer, mac: str, document: dict[str, object]) -> None:
    data = json.dumps({"content": document}).encode()
    request = urllib.request.Request(
        f"{server.url}/api/configs/{mac}", data, {"Content-Type": "application/json"}, method="PUT"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def measure(
    wrk: str, server: BenchServer, scenario: Scenario, args: argparse.Namespace
) -> Measurement:
    if args.warmup > 0:
        run_wrk(wrk, server, scenario, args.warmup)
    result = run_wrk(wrk, server, scenario, args.seconds)
    if any(result.errors.values()):
        raise SystemExit(f"{scenario.name}: wrk reported errors {result.errors}")
    print(
        f"  {scenario.name:22} {result.rps:7.0f} req/s  p99 {result.p99_ms:7.2f} ms"
        f"  {result.cpu_us_per_request:6.0f} us CPU/req",
        flush=True,
    )
    return result


def bench_store(wrk: str, store: str, server: BenchServer, args: argparse.Namespace) -> StoreResult:
    listing, _ = server.fetch("/api/configs")
    assert json.loads(listing)["count"] == args.devices, "the server does not list every document"
    rss_before = resident(server.pid)
    _, live_idle = while_probing(server, lambda: time.sleep(3))
    first, live_first = while_probing(
        server,
        lambda: [
            timed_get(server, path_of({"filter": f'and(eq(deviceModel,"plug"),ne(version,{n}))'}))[
                0
            ]
            for n in range(SINGLE)
        ],
    )
    selected = {
        name: json.loads(timed_get(server, path_of(query))[1])["count"] for name, query in SEARCHES
    }
    after_put: list[float] = []
    list_after_put: list[float] = []
    for n in range(SINGLE):
        mac, document = devices(n * len(MODELS) + 1)[-1]  # a relay board
        for path, times in ((path_of(SEARCHES[0][1]), after_put), ("/api/configs", list_after_put)):
            document["mqtt"] = {"host": f"broker-{n}-{len(times)}.lan"}
            put(server, mac, document)
            times.append(timed_get(server, path)[0])
    scenarios = [Scenario(name, path_of(query)) for name, query in SEARCHES]
    rounds = []
    for number in range(args.runs):
        print(f"{store}, round {number + 1} of {args.runs}", flush=True)
        rounds.append(
            {
                s.name: Pair(measure(wrk, server, LIST, args), measure(wrk, server, s, args))
                for s in scenarios
            }
        )
    return StoreResult(
        store, args.devices, selected, rounds, statistics.median(first), live_idle, live_first,
        statistics.median(after_put), statistics.median(list_after_put), rss_before,
        resident(server.pid), peak_memory(server.pid),
    )  # fmt: skip


def documents(work: Path, count: int) -> Path:
    """The directory of the documents (made again only when it holds another count)."""
    configs = work / "configs"
    if not configs.exists() or len(list(configs.iterdir())) != count:
        shutil.rmtree(configs, ignore_errors=True)
        configs.mkdir(parents=True)
        fill(configs, count)
    return configs


@contextlib.contextmanager
def directory_server(work: Path, count: int) -> Iterator[BenchServer]:
    with BenchServer(documents(work, count), work / "server.log") as server:
        yield server


@contextlib.contextmanager
def postgres_server(work: Path, count: int) -> Iterator[BenchServer]:
    """A throw-away cluster (tests/pg.py's), the documents copied in with `copy`."""
    from tests.pg import Cluster, _bin_dir  # the tests' way to run PostgreSQL

    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("bench: PostgreSQL is not installed (apt-get install postgresql)")
    cluster = Cluster(bin_dir)
    try:
        cluster.init()
        cluster.start()
        copy = [sys.executable, "-m", "quart_iot", "copy", "--from", str(documents(work, count))]
        subprocess.run([*copy, "--to", cluster.admin_url], check=True, capture_output=True)
        env = {"DATABASE_URL": cluster.admin_url}
        with BenchServer(None, work / "server-postgres.log", env) as server:
            yield server
    finally:
        cluster.remove()


def row(name: str, pairs: list[Pair], selected: int) -> tuple[str, float, bool]:
    ratios = [pair.search.rps / pair.listing.rps for pair in pairs]
    ratio = statistics.median(ratios)

    def median(value: str, of: str) -> float:
        return float(statistics.median(getattr(getattr(pair, of), value) for pair in pairs))

    line = (
        f"| {name} | {selected} | {median('rps', 'listing'):.0f} | {median('rps', 'search'):.0f} "
        f"| **{ratio:.2f}** | {median('p99_ms', 'listing'):.1f} | {median('p99_ms', 'search'):.1f} "
        f"| {median('cpu_us_per_request', 'listing'):.0f} "
        f"| {median('cpu_us_per_request', 'search'):.0f} |"
    )
    return line, ratio, ratio >= TARGET


def report(results: list[StoreResult], args: argparse.Namespace) -> tuple[str, bool]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# Fleet search: a filtered list against the unfiltered list",
        "",
        f"`./pdmw run bench-search --devices {args.devices} --runs {args.runs}` at {commit}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}: wrk, 1 thread, {CONNECTIONS} connections, "
        f"{args.seconds} s per run after a {args.warmup} s warm-up; each search right after "
        "the unfiltered list, the ratio taken within that pair, then the median of the "
        f"{args.runs} rounds. Target: ratio >= {TARGET}.",
    ]
    passed = True
    for result in results:
        lines += [
            "",
            f"## {result.store}, N = {result.documents}",
            "",
            "| search | selected | list req/s | search req/s | ratio | list p99 ms "
            "| search p99 ms | list CPU us/req | search CPU us/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, _ in SEARCHES:
            pairs = [round_[name] for round_ in result.rounds]
            line, _ratio, ok = row(name, pairs, result.selected[name])
            lines.append(line)
            passed = passed and ok
        lines += [
            "",
            f"A filter asked for the first time: {result.first_ms:.0f} ms (liveness meanwhile: "
            f"p50 {result.live_first[0]:.1f} ms, p99 {result.live_first[1]:.1f} ms; alone: "
            f"p50 {result.live_idle[0]:.1f} ms, p99 {result.live_idle[1]:.1f} ms). Right after "
            f"a PUT: a filtered list selecting the device {result.after_put_ms:.1f} ms, the "
            f"unfiltered list {result.list_after_put_ms:.1f} ms. Medians of {SINGLE} single "
            f"requests. Resident memory {result.rss_before / 2**20:.0f} MiB before any search, "
            f"{result.rss_after / 2**20:.0f} MiB after them all; peak "
            f"{result.peak_rss / 2**20:.0f} MiB.",
        ]
    lines += ["", f"Verdict: {'PASS' if passed else 'FAIL'}"]
    return "\n".join(lines) + "\n", passed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.search", description=__doc__)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of a run before each")
    parser.add_argument("--stores", default="directory,postgres", help="comma-separated")
    args = parser.parse_args(argv)
    wrk = require_wrk()
    work = WORK / f"search-n{args.devices}"
    servers = {"directory": directory_server, "postgres": postgres_server}
    results = []
    for store in args.stores.split(","):
        with servers[store](work, args.devices) as server:
            results.append(bench_store(wrk, store, server, args))
    page, passed = report(results, args)
    save_results("search", page, [asdict(result) for result in results])
    print(page)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
