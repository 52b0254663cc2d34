from pathlib import Path

from bench.schemas import CANDIDATES, main
from tests.esp32_schema import INVALID_VIOLATIONS, esp32_device, esp32_invalid_device, esp32_schema


def test_every_candidate_judges_the_documents_alike() -> None:
    found = {}
    for candidate in CANDIDATES:
        compiled = candidate.compile(esp32_schema())
        assert candidate.is_valid(compiled, esp32_device()), candidate.name
        assert not candidate.is_valid(compiled, esp32_invalid_device()), candidate.name
        found[candidate.name.split()[0]] = candidate.count_errors(compiled, esp32_invalid_device())
    assert found == {
        "jsonschema-rs": len(INVALID_VIOLATIONS),
        "jsonschema": len(INVALID_VIOLATIONS),
        "fastjsonschema": 1,  # it stops at the first
    }


def test_the_bench_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "schemas.md"
    assert main(["--rounds", "1", "--seconds", "0.001", "--out", str(out)]) == 0
    table = out.read_text(encoding="utf-8")
    assert "| jsonschema-rs " in table
    assert "| (a PUT's own parse + stored form) |" in table
    assert "REFUSED" not in table
