"""``benchmarks/hot_path.py`` still runs (a few records; the harness, not speed)."""

from __future__ import annotations

import contextlib
import io
import json

from benchmarks import hot_path


def test_hot_path_reports_pipeline_stages_and_primitives(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert hot_path.main(["--records", "60", "--stage-records", "20", "--repeat", "1", "--in-flight", "30",
                              "--profile", str(tmp_path / "p.txt"), "--json"]) == 0
    result = json.loads(out.getvalue())
    assert set(result["pipeline_us_per_record"]) == {"single (batch_max 1, 64 calls)",
                                                     "batch (batch_max 200, 16 calls)"}
    assert set(result["dispatch_us_per_record"]) == {f"{mode}, {path}" for mode in result["pipeline_us_per_record"]
                                                     for path in ("per record", "waves")}
    for section in ("pipeline_us_per_record", "dispatch_us_per_record", "stages_us", "primitives_us"):
        assert all(v > 0 for v in result[section].values()), result[section]
    assert "outcome" in (tmp_path / "p.txt").read_text()


def test_hot_path_with_every_recipient_new() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert hot_path.main(["--records", "40", "--stage-records", "10", "--repeat", "1", "--in-flight", "20",
                              "--keys", "0", "--json"]) == 0
    assert all(v > 0 for v in json.loads(out.getvalue())["pipeline_us_per_record"].values())
