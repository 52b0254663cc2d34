import argparse
import urllib.parse
from pathlib import Path

from bench.search import SEARCHES, Pair, StoreResult, fill, path_of, report
from bench.wrk import Measurement
from quart_iot.documents import parse_document


def test_the_search_bench_writes_documents_with_models_and_encodes_its_queries(
    tmp_path: Path,
) -> None:
    fill(tmp_path, 10)
    models = [
        parse_document(path.read_bytes())["deviceModel"] for path in sorted(tmp_path.iterdir())
    ]
    assert models.count("relay_board") == 2
    path = path_of({"filter": 'eq(a,"b c+")', "fields": "x,y"})
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert query == {"filter": ['eq(a,"b c+")'], "fields": ["x,y"]}
    assert "+" not in path.split("?")[1]  # a + would arrive as a space


def measurement(rps: float) -> Measurement:
    return Measurement("x", rps, 1.0, 2.0, 300.0, int(rps), {"timeout": 0})


def test_the_search_bench_judges_each_ratio_within_its_pair() -> None:
    rounds = [
        {
            name: Pair(measurement(100), measurement(rps))
            for (name, _), rps in zip(SEARCHES, r, strict=True)
        }
        for r in ([60, 50, 200, 40], [30, 80, 200, 45], [70, 90, 200, 44])
    ]
    result = StoreResult(
        "directory", 20_000, {name: 1 for name, _ in SEARCHES}, rounds, 1500.0, (1.0, 2.0),
        (3.0, 9.0), 10.0, 9.0, 2**26, 2**27, 2**27,
    )  # fmt: skip
    args = argparse.Namespace(devices=20_000, runs=3, seconds=5, warmup=1)
    page, passed = report([result], args)
    assert "| filter, 1 in 5 | 1 | 100 | 60 | **0.60** |" in page
    assert "| fields, every device | 1 | 100 | 44 | **0.44** |" in page
    assert not passed
    assert page.endswith("Verdict: FAIL\n")
