"""`./pdmw run bench-schemas`: which JSON Schema library validates device documents.

In one process, for each candidate: compiling the realistic ESP32 schema (tests/esp32_schema.json,
Wi-Fi, MQTT, OTA, GPIO, `$defs` with local `$ref`s), validating the conforming document (1.9 KB)
and a 20 KB one as every write would (a yes/no answer first), and listing every violation of
the invalid document. Each figure is the median of `--rounds` rounds of a loop sized to take
about `--seconds`. For scale, beside them: the parse and stored-form encoding of the same
documents, which every PUT does anyway, and quart_iot's check_schema (the meta-schema check
and the compilation a model's PUT does). Writes bench/results/schemas.md.

jsonschema builds its validator lazily: its "compile" is an object; the work shows up in the
first validations, which the loops measure.
"""

import argparse
import json
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs

from bench.__main__ import RESULTS
from quart_iot.documents import dump_document, parse_json
from quart_iot.validation import check_schema
from tests.esp32_schema import (
    esp32_device,
    esp32_invalid_device,
    esp32_schema,
    large_esp32_device,
)

Validate = Callable[[Any], bool]
ListErrors = Callable[[Any], int]


@dataclass(frozen=True)
class Candidate:
    """One library: how it compiles, answers valid or not, and lists the violations."""

    name: str
    compile: Callable[[dict[str, Any]], Any]
    is_valid: Callable[[Any, Any], bool]
    count_errors: Callable[[Any, Any], int]  # how many violations it reports
    draft: str


def _rs_compile(schema: dict[str, Any]) -> Any:
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)


def _py_compile(schema: dict[str, Any]) -> Any:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _fast_valid(validate: Any, document: Any) -> bool:
    try:
        validate(document)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


CANDIDATES = [
    Candidate(
        f"jsonschema-rs {version('jsonschema-rs')}",
        _rs_compile,
        lambda validator, document: bool(validator.is_valid(document)),
        lambda validator, document: len(list(validator.iter_errors(document))),
        "2020-12",
    ),
    Candidate(
        f"jsonschema {version('jsonschema')} (+ referencing {version('referencing')})",
        _py_compile,
        lambda validator, document: bool(validator.is_valid(document)),
        lambda validator, document: len(list(validator.iter_errors(document))),
        "2020-12",
    ),
    Candidate(
        f"fastjsonschema {version('fastjsonschema')}",
        fastjsonschema.compile,
        _fast_valid,
        lambda validate, document: 0 if _fast_valid(validate, document) else 1,  # the first
        "draft-07 at most (the schema read as draft-07)",
    ),
]


def median_us(action: Callable[[], object], rounds: int, seconds: float) -> float:
    """The median time of one call, in microseconds."""
    timer = timeit.Timer(action)
    once = timer.timeit(number=1)  # sizes the loop: about `seconds` a round
    loops = max(1, int(seconds / max(once, 1e-7)))
    times = timer.repeat(repeat=rounds, number=loops)
    return statistics.median(times) / loops * 1e6


def measure(candidate: Candidate, rounds: int, seconds: float) -> dict[str, Any]:
    """The candidate's medians (µs) and what it found in the documents."""
    schema = esp32_schema()
    valid, large, invalid = esp32_device(), large_esp32_device(), esp32_invalid_device()
    compiled = candidate.compile(schema)
    return {
        "candidate": candidate.name,
        "draft": candidate.draft,
        "valid ok": candidate.is_valid(compiled, valid) and candidate.is_valid(compiled, large),
        "invalid found": candidate.count_errors(compiled, invalid),
        "compile": median_us(lambda: candidate.compile(schema), rounds, seconds),
        "valid 1.9 KB": median_us(lambda: candidate.is_valid(compiled, valid), rounds, seconds),
        "valid 20 KB": median_us(lambda: candidate.is_valid(compiled, large), rounds, seconds),
        "all violations": median_us(
            lambda: candidate.count_errors(compiled, invalid), rounds, seconds
        ),
    }


def put_work(rounds: int, seconds: float) -> dict[str, float]:
    """For scale: what every PUT of these documents does anyway (strict parse, stored form),
    and what a model's PUT will do (the meta-schema check and the compilation)."""
    body, large = (json.dumps(d).encode() for d in (esp32_device(), large_esp32_device()))
    schema = esp32_schema()
    return {
        "valid 1.9 KB": median_us(lambda: dump_document(parse_json(body)), rounds, seconds),
        "valid 20 KB": median_us(lambda: dump_document(parse_json(large)), rounds, seconds),
        "check_schema": median_us(lambda: check_schema(schema), rounds, seconds),
    }


COLUMNS = ["compile", "valid 1.9 KB", "valid 20 KB", "all violations"]


def report(rows: list[dict[str, Any]], scale: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        "# JSON Schema libraries on the ESP32 schema (`./pdmw run bench-schemas`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, Python {platform.python_version()}, "
        f"{args.rounds} rounds of about {args.seconds} s each, medians in microseconds per call.",
        "",
        "| library | draft | compile | valid 1.9 KB | valid 20 KB | all violations | found |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        figures = " | ".join(f"{row[column]:.1f}" for column in COLUMNS)
        found = f"{row['invalid found']}{'' if row['valid ok'] else ', VALID DOC REFUSED'}"
        lines.append(f"| {row['candidate']} | {row['draft']} | {figures} | {found} |")
    lines.append(
        f"| (a PUT's own parse + stored form) | | | {scale['valid 1.9 KB']:.1f} "
        f"| {scale['valid 20 KB']:.1f} | | |"
    )
    lines.append(
        f"| (quart_iot's check_schema: meta-schema + compile) | 2020-12 "
        f"| {scale['check_schema']:.1f} | | | | |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.schemas", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="rounds (medians)")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds of each round")
    parser.add_argument("--out", default=str(RESULTS / "schemas.md"), help="the results file")
    args = parser.parse_args(argv)
    rows = [measure(candidate, args.rounds, args.seconds) for candidate in CANDIDATES]
    page = report(rows, put_work(args.rounds, args.seconds), args)
    with open(args.out, "w", encoding="utf-8") as out:
        out.write(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
