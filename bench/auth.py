"""`./pdmw run bench-auth`: get and the device endpoint with a valid bearer token, vs liveness.

Starts the real OpenID Provider of the tests (tests/oidc/, oidc-provider on Node.js), a
`python -m quart_iot` with access control on, takes a reader and a device token from the
provider, then measures each scenario right after the ceiling (`GET /api/health/live`, no
token), as `./pdmw run bench` does. Writes bench/results/auth.md.
"""

import argparse
import shutil
import sys
from pathlib import Path

from bench.__main__ import CEILING_SCENARIO, READ_MAC, RESULTS, WORK
from bench.documents import fill_directory, make_document
from bench.report import Pair, SizeResult, rows
from bench.server import BenchServer
from bench.wrk import CONNECTIONS, Measurement, Scenario, require_wrk, run_wrk
from quart_iot.documents import dump_document
from tests.oidc_provider import AUDIENCE, Provider, SigningKey, install

TARGET = 0.6
DOCUMENTS = 200
DEVICE_MAC = "aa-bb-cc-dd-ee-ff"  # the MAC the provider's `device-a` client carries


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.auth", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each wrk run")
    args = parser.parse_args(argv)
    wrk = require_wrk()
    work = WORK / "auth"
    shutil.rmtree(work, ignore_errors=True)
    (work / "configs").mkdir(parents=True)
    total = fill_directory(work / "configs", DOCUMENTS)
    document = dump_document(make_document(DOCUMENTS))
    (work / "configs" / f"{DEVICE_MAC}.json").write_bytes(document)
    install()
    provider = Provider([SigningKey("bench")])
    provider.start()
    try:
        result = measure(wrk, provider, work, total, args)
    finally:
        provider.close()
    page = report(result, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auth.md").write_text(page, encoding="utf-8")
    print(page)
    return 0 if all(row.ratio >= TARGET for row in rows(result)[1:]) else 1


def measure(
    wrk: str, provider: Provider, work: Path, total: int, args: argparse.Namespace
) -> SizeResult:
    with BenchServer(work / "configs", work / "server.log", env(provider)) as server:
        reader, device = provider.token("reader"), provider.token("device-a")
        plan = [
            Scenario("get (reader token)", f"/api/configs/{READ_MAC}", bearer(reader)),
            Scenario(
                "device get (device token)", f"/api/configs/{DEVICE_MAC}.json", bearer(device)
            ),
        ]
        runs = [
            {
                s.name: Pair(_run(wrk, server, CEILING_SCENARIO, args), _run(wrk, server, s, args))
                for s in plan
            }
            for _ in range(args.runs)
        ]
    return SizeResult(DOCUMENTS, total, 0, runs)


def env(provider: Provider) -> dict[str, str]:
    return {"OIDC_ISSUER": provider.issuer, "OIDC_AUDIENCE": AUDIENCE}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _run(
    wrk: str, server: BenchServer, scenario: Scenario, args: argparse.Namespace
) -> Measurement:
    run_wrk(wrk, server, scenario, 1)  # warm-up
    result = run_wrk(wrk, server, scenario, args.seconds)
    if any(result.errors.values()):
        raise SystemExit(f"{scenario.name}: wrk reported errors {result.errors}")
    return result


def report(result: SizeResult, args: argparse.Namespace) -> str:
    lines = [
        "# Access control benchmark",
        "",
        f"`./pdmw run bench-auth --runs {args.runs} --seconds {args.seconds}`: wrk, 1 thread, "
        f"{CONNECTIONS} connections, {DOCUMENTS} documents, access control on (RS256 tokens "
        "from oidc-provider). Each scenario is measured right after the ceiling "
        "(`GET /api/health/live`, no token); ratios are taken within each pair, then the median "
        f"of the runs. Target: ratio >= {TARGET}.",
        "",
        "| scenario | req/s | ratio to ceiling | p50 ms | p99 ms | CPU us/req | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows(result):
        verdict = "" if row.scenario == "ceiling" else ("PASS" if row.ratio >= TARGET else "FAIL")
        lines.append(
            f"| {row.scenario} | {row.rps:.0f} | {row.ratio:.2f} | {row.p50_ms:.2f} "
            f"| {row.p99_ms:.2f} | {row.cpu_us:.0f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
