from bench.rql import CASES, devices, measure, report


def test_the_filter_bench_runs_and_its_hand_written_selections_agree() -> None:
    fleet = devices(60)
    rows = measure(fleet, 1)  # asserts each hand-written selection equals the filter's
    assert [row["filter"] for row in rows[: len(CASES)]] == [text for text, _ in CASES]
    assert [row["selected"] for row in rows[:3]] == [12, 12, 0]  # 1 in 5 is a relay board
    page = report(rows, 60, 1)
    assert page.count("\n| `") == len(CASES) + 1
