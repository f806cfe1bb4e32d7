import json

from depthlab.demo import check_expectation, run_demo


def test_demo_at_reduced_size_shows_degradation(tmp_path):
    res = run_demo(out=str(tmp_path / "demo"), depths=(8, 44), epochs=6, quiet=True)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert isinstance(results, list) and len(results) == 4
    for r in results:
        assert {"model", "depth", "train_acc", "test_acc", "params"} <= set(r)
    by = {(r["family"], r["depth"]): r for r in results}
    assert by[("plain", 44)]["params"] == by[("resnet", 44)]["params"]
    # the finding: the deepest plain net trains clearly worse than the resnet of the same depth
    assert by[("resnet", 44)]["train_acc"] - by[("plain", 44)]["train_acc"] >= 0.05
    assert res["check"]["observed"] is True
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "plain44" in html and "data:image/png;base64," in html
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 10_000


def test_check_expectation_reports_a_missing_gap():
    rows = [{"family": "plain", "depth": 56, "train_acc": 0.9}, {"family": "resnet", "depth": 56, "train_acc": 0.92}]
    assert check_expectation(rows)["observed"] is False
    rows[0]["train_acc"] = 0.5
    assert check_expectation(rows)["observed"] is True
