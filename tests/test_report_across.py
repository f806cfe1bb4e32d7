"""``depthlab report A B ...``: the same experiments' verdicts side by side, one column per directory."""
import json

from depthlab.cli import main
from depthlab.report.across import claim_key, compare_verdicts
from depthlab.report.markdown import compare_markdown

JPEG = "CIFAR-10 from its class-folder form (JPEG images; JPEG is a lossy re-encoding)"


def _v(claim, status="observed", detail="x 1.0%"):
    return {"claim": claim, "status": status, "detail": detail, "seeds": 3}


def _experiment(root, name, data, scale, verdicts, folder=None):
    d = root / (folder or name)
    d.mkdir(parents=True)
    (d / "experiment.json").write_text(json.dumps({
        "name": name, "title": f"{name} title", "source": "Someone 2015", "scale": scale,
        "data": {"name": data, "source": JPEG if data == "cifar10" else ""} if data else {"name": None},
        "verdicts": verdicts}))


def _roots(tmp_path):
    quick, real = tmp_path / "quick", tmp_path / "real"
    _experiment(quick, "degradation", "digits", "quick", [
        _v("plain-56 has a higher training error than plain-20 (by >= 5%)", detail="plain-20 1.0%, plain-56 9.0%"),
        _v("resnet-56 trains at least as well as resnet-20 (within 1.0%)"),
        _v("resnet-20 trains at least as well as resnet-8 (within 1.0%)", "not observed"),
        _v("resnet-110 trains at least as well as resnet-56 (within 1.0%)", "inconclusive (3 seeds, spread 0.01)")])
    _experiment(quick, "lesion", "digits", "quick", [_v("resnet-56: deleting one block barely hurts")])
    _experiment(real, "degradation", "cifar10", "real", [
        _v("plain-56 has a higher training error than plain-20 (by >= 5%)", detail="plain-20 50.7%, plain-56 74.4%"),
        _v("resnet-56 trains at least as well as resnet-20 (within 1.0%)", "not observed")])
    return quick, real


def test_verdicts_line_up_by_their_wording_without_numbers(tmp_path):
    quick, real = _roots(tmp_path)
    assert claim_key("plain-110 beats plain-20 (by >= 2.5%)") == claim_key("plain-56 beats plain-8 (by >= 5%)")
    c = compare_verdicts([quick, real])
    assert c["columns"] == ["digits", "CIFAR-10 (JPEG re-encoding)"]
    deg, les = c["experiments"]
    assert (deg["name"], les["name"]) == ("degradation", "lesion")
    cells = [[v and v["status"].split(" (")[0] for v in r["cells"]] for r in deg["rows"]]
    # the n-th "resnet-# trains at least as well as resnet-#" meets the n-th; grids of other depths leave gaps
    assert cells == [["observed", "observed"], ["observed", "not observed"], ["not observed", None],
                     ["inconclusive", None]]
    assert deg["rows"][0]["cells"][1]["detail"] == "plain-20 50.7%, plain-56 74.4%"
    assert [[v is not None for v in r["cells"]] for r in les["rows"]] == [[True, False]]

    md = compare_markdown([quick, real], "depthlab report quick real")
    assert "| observed | 3 | 1 |" in md and "| not observed | 1 | 1 |" in md and "| inconclusive | 1 | 0 |" in md
    assert ("| plain-56 has a higher training error than plain-20 (by >= 5%) | **observed**: plain-20 1.0%, "
            "plain-56 9.0% | **observed**: plain-20 50.7%, plain-56 74.4% |") in md
    assert "| resnet-56: deleting one block barely hurts | **observed**: x 1.0% | - |" in md


def test_same_dataset_columns_are_told_apart_by_scale_then_folder(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _experiment(a, "highway", "cifar10", "real", [_v("h")])
    _experiment(b, "highway", "cifar10", "paper", [_v("h")])
    _experiment(c, "highway", "cifar10", "paper", [_v("h")])
    assert compare_verdicts([a, b])["columns"] == ["CIFAR-10 (JPEG re-encoding), real scale",
                                                   "CIFAR-10 (JPEG re-encoding), paper scale"]
    assert compare_verdicts([b, c])["columns"][1] == "CIFAR-10 (JPEG re-encoding), paper scale (c)"


def test_one_folder_of_two_scales_gives_two_columns_and_a_dataless_experiment_joins_its_scale(tmp_path, capsys):
    """``reproduce X`` and ``reproduce X --scale real`` both write under runs/reproduce (X, X-real)."""
    root = tmp_path / "reproduce"
    _experiment(root, "shattered", None, "quick", [_v("1-D inputs shatter")])
    _experiment(root, "degradation", "digits", "quick", [_v("plain-56 beats plain-20")])
    _experiment(root, "degradation", "cifar10", "real", [_v("plain-56 beats plain-20", "not observed")],
                folder="degradation-real")
    c = compare_verdicts([root])
    assert c["columns"] == ["digits", "CIFAR-10 (JPEG re-encoding)"]
    assert [e["name"] for e in c["experiments"]] == ["degradation", "shattered"]
    assert [[v and v["status"] for v in r["cells"]] for e in c["experiments"] for r in e["rows"]] == [
        ["observed", "not observed"], ["observed", None]]
    assert main(["report", str(root), "--compare", "--html", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").is_file() and capsys.readouterr().out.strip() == str(tmp_path / "c.html")


def test_cli_writes_the_page_and_the_markdown_and_escapes_what_files_say(tmp_path, capsys):
    quick, real = _roots(tmp_path)
    evil = "<img src=x onerror=alert(1)>"
    _experiment(real, "lesion", "cifar10", "real", [_v(evil, status=evil, detail=evil)])
    page, md = tmp_path / "out" / "cmp.html", tmp_path / "cmp.md"
    (tmp_path / "out").mkdir()
    assert main(["report", str(quick), str(real), "--markdown", str(md), "--html", str(page)]) == 0
    html, text = page.read_text(), md.read_text()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "class='unknown'>unknown</span>" in html and "class='observed'>observed</span>" in html
    assert "<img" not in text and "**unknown**: &lt;img src=x onerror=alert(1)>" in text
    assert capsys.readouterr().out.split() == [str(page), str(md)]

    assert main(["report", str(quick), "--html", str(page)]) == 2
    assert "--html names the page of a comparison" in capsys.readouterr().err
    assert main(["report", str(quick), str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
