"""Reports from run directories someone else wrote: every string of every file (config values, every
field of every metrics and diagnostics record, experiment and tracked-run documents, run names) is a
script-injection attempt, some numbers are strings, and symbolic links point out of the folder. The
report is written, opened in headless Chromium, and must run no script, carry no event handler or
``javascript:`` link, show the hostile text as text, and write nothing outside the folder asked for."""
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from depthlab.cli import main
from depthlab.config import RunConfig
from depthlab.diagnose_run import diagnose
from depthlab.experiments.runner import reproduce
from depthlab.report.html import CSP
from depthlab.report.inputs import file_stem, href, inside
from depthlab.training import train

pytestmark = pytest.mark.filterwarnings("ignore:Tight layout not applied")  # long hostile labels

PWN = "document.body.dataset.pwned=1"
EVIL = (f"'\"><img src=x onerror={PWN}><script>{PWN}</script><a href=javascript:{PWN}>x</a>"
        "<svg onload=" + PWN + "></svg>${\\alpha}^ ``` ")
RUN_NAMES = [f"run'\"><img src=x onerror={PWN}>", f"javascript:{PWN};", "plain"]
KEEP = {"type", "metrics", "kind", "xscale", "yscale", "style", "marker", "color"}  # what a figure must parse


def evil(tag: str) -> str:
    return f"{tag}{EVIL}../../outside/{tag}"


def hostile(v, key: str = ""):
    """Every string in ``v`` turned into an injection attempt that starts with it (so records still
    group by quantity and name)."""
    if isinstance(v, str):
        return v if key in KEEP else evil(v)
    if isinstance(v, list):
        return [hostile(x, key) for x in v]
    if isinstance(v, dict):
        return {k: hostile(x, k) for k, x in v.items()}
    return v


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(root: Path) -> dict:
    """Every entry under ``root`` (links not followed): its kind and content."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = (("link", os.readlink(p)) if p.is_symlink() else ("dir", None) if p.is_dir()
                        else ("file", p.read_bytes()))
    return out


@pytest.fixture(scope="module")
def received(tmp_path_factory):
    """``base/received``: a folder someone sent, with hostile runs, an experiment and a tracked run;
    ``base/outside``: files the report must never touch."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("hostile")
    work = base / "work"
    cfg = RunConfig().with_overrides(["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=1",
                                      "train.batch_size=128", "train.device=cpu", "train.threads=1",
                                      f"out_dir={work}", "run_id=real", "diagnostics.track_gradients=true"])
    train(cfg, quiet=True)
    diagnose(cfg.run_dir, "all")
    reproduce("degradation", seeds=1, params={"depths": [8, 14], "epochs": 1}, out=str(work / "exp"), device="cpu",
              quiet=True)

    outside = base / "outside"
    (outside / "victim_run").mkdir(parents=True)
    shutil.copy(cfg.run_dir / "config.json", outside / "victim_run")
    (outside / "secret.txt").write_text("the user's own file")
    (outside / "victim.png").write_bytes(b"not to be overwritten")
    (outside / "dir").mkdir()

    root = base / "received"
    records = _rows(cfg.run_dir / "diagnostics.jsonl")
    few = [r for r in records if r["quantity"] in ("gradient_flow", "lesion")]  # drawing is what takes time
    for name in RUN_NAMES:  # every string of every record hostile, the file layout as depthlab writes it
        d = root / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(hostile(json.loads((cfg.run_dir / "config.json").read_text()))))
        _jsonl(d / "metrics.jsonl", hostile(_rows(cfg.run_dir / "metrics.jsonl")))
        _jsonl(d / "diagnostics.jsonl", hostile(records if name == "plain" else few))
    (root / RUN_NAMES[0] / "report.html").symlink_to(outside / "secret.txt")    # a page written through a link
    (root / RUN_NAMES[1] / "report_files").symlink_to(outside / "dir")          # figures written through a link
    plain = root / "names-plain"  # real quantity names: a figure's file name is known, and is a link outside
    shutil.copytree(cfg.run_dir, plain, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    _jsonl(plain / "diagnostics.jsonl", [r for r in records if r["quantity"] == "gradient_flow"])
    (plain / "report_files").mkdir()
    (plain / "report_files" / "diagnostics_gradient_flow.png").symlink_to(outside / "victim.png")
    (root / "linked").symlink_to(outside / "victim_run")  # a run folder elsewhere: never followed

    confused = root / "types"  # numbers as strings, strings as numbers, records that are not objects
    confused.mkdir()
    (confused / "config.json").write_text(json.dumps({"model": evil("m"), "train": [1], "data": {"name": 3}}))
    _jsonl(confused / "metrics.jsonl", [{k: evil(k) for k in r} | {"kind": "epoch"}
                                        for r in _rows(cfg.run_dir / "metrics.jsonl")]
           + [{"kind": "epoch", "epoch": 1, "train_acc": evil("acc"), "train_loss": [1], "lr": {"x": 1}}, [1], "s"])
    _jsonl(confused / "diagnostics.jsonl", [{"quantity": 5, "name": "x", "value": 1}, [evil("list")],
                                            {"quantity": evil("q"), "name": evil("n"), "value": evil("v")},
                                            {"quantity": evil("q"), "name": evil("n"), "value": [1, 2], "step": "s",
                                             "x": [evil("x"), 1], "x_label": {"a": 1}}])

    exp = root / "experiment"
    shutil.copytree(work / "exp", exp)
    doc = json.loads((exp / "experiment.json").read_text())
    run_ids = [r["run_id"] for r in doc["runs"]]
    doc = hostile(doc)
    for r, run_id in zip(doc["runs"], run_ids):
        r["run_dir"] = f"runs/{run_id}"  # still found, so the curves are drawn with hostile labels
        r["status"] = "diverged"
    doc["figures"].append({"type": "curves", "title": evil("outside"), "runs": {evil("label"): "../../outside/x"}})
    doc["figures"].append({"type": evil("type"), "title": evil("unknown")})
    doc["params"][evil("param")] = evil("param value")
    (exp / "experiment.json").write_text(json.dumps(doc))

    tracked = root / "tracked"
    tracked.mkdir()
    (tracked / "tracked.json").write_text(json.dumps(hostile(
        {"model": "m:f", "params": 12, "layers": ["a", "b"], "every": "5", "quantities": ["q"], "blocks": ["b"],
         "data": "d", "started": "now"})))
    _jsonl(tracked / "diagnostics.jsonl", hostile(few))
    shutil.rmtree(work)
    return base


@pytest.fixture(scope="module")
def reported(received):
    """The report of the whole received folder, through the CLI, with a Markdown copy beside it."""
    before = _snapshot(received)
    md = received / "results.md"
    assert main(["report", str(received / "received"), "--markdown", str(md)]) == 0
    return {"before": before, "after": _snapshot(received), "md": md, "root": received / "received"}


def test_the_report_writes_nothing_outside_the_folder_and_follows_no_link_out_of_it(reported):
    before, after = reported["before"], reported["after"]
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed, "the report wrote nothing"
    outside = sorted(k for k in changed if not k.startswith("received/") and k != "results.md")
    assert outside == [], f"written outside the report folder: {outside}"
    assert after["outside/secret.txt"] == ("file", b"the user's own file")
    assert after["outside/victim.png"] == ("file", b"not to be overwritten")
    assert not [k for k in after if k.startswith("outside/dir/")]
    assert "outside/victim_run/report.html" not in after
    root = reported["root"]
    assert not (root / RUN_NAMES[0] / "report.html").is_symlink()  # the link was replaced, not followed
    assert not (root / RUN_NAMES[1] / "report_files").is_symlink()
    assert (root / "linked").is_symlink()
    for png in root.rglob("report_files/*"):
        assert re.fullmatch(r"diagnostics_[A-Za-z0-9_.-]+\.png", png.name), png.name
        assert not png.is_symlink() and png.resolve().is_relative_to(root.resolve())


PAGE_FACTS = """(() => {
  const els = [...document.querySelectorAll('*')];
  return {
    pwned: document.body.dataset.pwned || null,
    scripts: document.scripts.length,
    embeds: document.querySelectorAll('iframe,object,embed,svg,form,base,meta[http-equiv=refresh]').length,
    handlers: els.flatMap(e => [...e.attributes].filter(a => a.name.startsWith('on'))
                                                .map(a => e.tagName + ' ' + a.name)),
    urls: els.flatMap(e => ['href', 'src', 'action'].map(k => e.getAttribute(k)).filter(Boolean)),
    csp: document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.content || null,
    images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                            scheme: i.src.split(':')[0]})),
    links: [...document.links].map(a => a.href),
    text: document.body.innerText,
  };
})()"""


def _pages(root: Path):
    return sorted(p for p in root.rglob("*.html") if not p.is_symlink())


def test_hostile_pages_run_no_script_in_chromium_and_show_the_text_as_text(browser, reported):
    pages = _pages(reported["root"])
    assert len(pages) >= 7, pages  # index, 3 hostile runs, names-plain, types, experiment, tracked
    for page in pages:
        load = browser.open(page.resolve().as_uri())
        facts = browser.evaluate(PAGE_FACTS)
        name = page.relative_to(reported["root"]).as_posix()
        assert facts["pwned"] is None and facts["scripts"] == 0, name
        assert facts["handlers"] == [] and facts["embeds"] == 0, (name, facts["handlers"])
        assert [u for u in facts["urls"] if urlparse(u.strip()).scheme not in ("", "data")] == [], name
        assert facts["csp"] == CSP, name
        assert all(i["ok"] and i["scheme"] == "data" for i in facts["images"]), (name, facts["images"])
        assert load.errors() == [], (name, load.errors())  # a blocked injection would be a CSP error here
        assert [u for u in load.requested_urls() if urlparse(u).scheme not in ("file", "data")] == [], name
        if page.name == "report.html" and page.parent.name not in ("types", "names-plain"):
            assert f"<img src=x onerror={PWN}>" in facts["text"], name  # shown as written, not dropped
        for link in facts["links"]:
            target = Path(unquote(urlparse(link).path))
            assert target.is_file() and target.resolve().is_relative_to(reported["root"].resolve()), (name, link)


def test_the_index_links_every_page_and_no_link_outside(browser, reported):
    root = reported["root"]
    browser.open((root / "index.html").resolve().as_uri())
    facts = browser.evaluate(PAGE_FACTS)
    targets = {Path(unquote(urlparse(u).path)).resolve() for u in facts["links"]}
    assert targets == {p.resolve() for p in _pages(root) if p.name == "report.html"}
    assert all(urlparse(u).scheme == "file" for u in facts["links"]), facts["links"]


def test_hostile_figures_are_drawn_or_say_why_and_read_no_run_outside(reported):
    page = (reported["root"] / "experiment" / "report.html").read_text()
    assert page.count("<img ") >= 2  # the degradation figures, drawn with hostile labels
    assert "is not inside" in page and "unknown figure type" in page
    run_page = (reported["root"] / RUN_NAMES[2] / "report.html").read_text()
    assert run_page.count("image/png") >= 5  # every diagnostic quantity drawn under its hostile name


def test_the_markdown_copy_renders_to_no_tag_or_link_it_did_not_mean(reported):
    """Rendered by a CommonMark parser that passes raw HTML through (markdown-it, rich's own
    dependency): only the structure depthlab writes comes out, and the hostile text is shown."""
    from markdown_it import MarkdownIt

    out = MarkdownIt("commonmark").enable("table").render(reported["md"].read_text())
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", out))
    assert tags <= {"h1", "h2", "h3", "h4", "p", "strong", "em", "code", "pre", "table", "thead", "tbody", "tr",
                    "th", "td", "ul", "li", "blockquote", "a"}, tags
    links = re.findall(r"<a href=\"([^\"]*)\"", out)
    assert links and all(re.fullmatch(r"#[a-z0-9_-]+", u) for u in links), links  # anchors to its own headings
    assert "&lt;img src=x onerror=" in out


def test_malformed_records_are_skipped_with_a_line_naming_the_file(tmp_path, received, capsys):
    root = tmp_path / "types"
    shutil.copytree(received / "received" / "types", root)
    assert main(["report", str(root)]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl: " in err and "diagnostics.jsonl: " in err and "malformed record(s) skipped" in err
    assert all(line.startswith("depthlab: ") for line in err.splitlines())


def test_names_become_safe_file_names_and_links():
    assert file_stem("gradient_flow") == "gradient_flow"
    for name in ("../../f", "a/b", ".hidden", "x' onload='y", "", "$\\alpha"):
        stem = file_stem(name)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", stem) and not stem.startswith("."), (name, stem)
    assert file_stem("a/b") != file_stem("a_b")  # distinct names stay distinct
    assert href("javascript:alert(1)/report.html").startswith("./javascript%3A")
    assert inside(Path("/tmp/x"), "runs/a") == Path("/tmp/x/runs/a").resolve()
    assert inside(Path("/tmp/x"), "../y") is None and inside(Path("/tmp/x"), "/etc") is None
