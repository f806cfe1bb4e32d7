"""The HTML reports in a real browser (headless Chromium over the DevTools Protocol): every page
loads from file:// without console errors or outside requests, has its sections, and every figure
decodes and takes up space on the page. Screenshots go to $DEPTHLAB_ARTEFACTS (default: the test's
tmp dir). Without Chromium the test is skipped, except under CI (env CI set), where it fails."""
import os
import struct
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

EXPERIMENT_SECTIONS = ["summary", "verdicts", "results", "figures", "provenance"]
RUN_SECTIONS = ["summary", "figures", "results", "provenance"]

# sections, images (with decoded and rendered sizes), links and scripts of the page in the tab
PAGE_FACTS = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    title: document.title,
    sections: [...document.querySelectorAll("section[id]")].map(s => s.id),
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
                                            natural: [i.naturalWidth, i.naturalHeight],
                                            box: box(i), scheme: i.src.split(":")[0]})),
    links: [...document.links].map(a => a.href),
    scripts: document.scripts.length,
    text: document.body.innerText.length,
  };
})()"""


@pytest.fixture(scope="module")
def site(chromium_path, tmp_path_factory):
    """Real pages: a reproduced experiment, a plain run with diagnostics, the index over both, and
    the demo report."""
    from depthlab.config import RunConfig
    from depthlab.demo import run_demo
    from depthlab.experiments.runner import reproduce
    from depthlab.report import write_report
    from depthlab.training import train

    root = tmp_path_factory.mktemp("site")
    reproduce("degradation", seeds=1, params={"depths": [8, 14], "epochs": 1}, out=str(root / "degradation"),
              device="cpu", quiet=True)
    run = RunConfig().with_overrides(["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=2",
                                      "train.batch_size=128", "train.device=cpu", f"out_dir={root / 'runs'}",
                                      "run_id=tiny", "diagnostics.quantities=responses@1,orthonormality@last"])
    train(run, quiet=True)
    index = write_report(root)
    demo = tmp_path_factory.mktemp("demo")
    run_demo(out=str(demo), depths=(8,), epochs=1, quiet=True)
    return {"experiment": root / "degradation" / "report.html", "run": run.run_dir / "report.html",
            "index": index, "demo": demo / "report.html"}


@pytest.fixture(scope="module")
def more(tmp_path_factory):
    """The pages a researcher reads besides: a diagnosed run, an own-model diagnosis, a diverged run,
    a sweep and a two-run comparison."""
    import sys

    from depthlab.config import RunConfig
    from depthlab.report import compare, write_report
    from depthlab.sweep import run_sweep
    from depthlab.tracking import diagnose_user_model
    from depthlab.training import train

    root = tmp_path_factory.mktemp("more")
    common = ["data.name=digits", "train.device=cpu", "train.threads=1", f"out_dir={root / 'runs'}"]
    for run_id, depth in (("plain14", 14), ("resnet14", 14)):
        name = "plain" if run_id.startswith("plain") else "resnet"
        train(RunConfig().with_overrides([f"model.name={name}", f"model.depth={depth}", "model.width=8",
                                          "train.epochs=2", f"run_id={run_id}", *common,
                                          "diagnostics.quantities=gradient_flow@1,lesion@last,discriminability@last"
                                          if name == "resnet" else "diagnostics.quantities=gradient_flow@1"]),
              quiet=True)
    boom = RunConfig().with_overrides(["model.name=plain", "model.depth=8", "model.width=4", "train.epochs=2",
                                       "train.lr=1e6", "run_id=boom", *common])
    train(boom, quiet=True)
    examples = str(Path(__file__).resolve().parents[1] / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    own = root / "own"
    diagnose_user_model(f"{examples}/tvnets.py:resnet18_layout", "digits", own, "gradient_flow,lesion,paths",
                        options={"lesion": {"max_k": 2, "samples": 2}})
    sweep = run_sweep({"name": "tiny", "out_dir": str(root / "sweeps"),
                       "base": {"data": {"name": "digits"}, "train.epochs": 2, "model.width": 4, "model.depth": 8},
                       "grid": {"model.name": ["plain", "resnet"]}, "seeds": 1, "workers": 1}, quiet=True)
    return {"diagnosed": write_report(root / "runs" / "resnet14"), "own": write_report(own),
            "diverged": write_report(boom.run_dir), "sweep": Path(sweep["paths"]["html"]),
            "comparison": compare([root / "runs" / "plain14", root / "runs" / "resnet14"], root / "compare.html")}


@pytest.mark.parametrize("name", ["diagnosed", "own", "diverged", "sweep", "comparison"])
def test_the_pages_a_researcher_reads(browser, more, artefacts, name):
    """Each loads offline and cleanly; where there are diagnostics, the plain-language reading and
    the table of single numbers come first (single numbers are never drawn as one-bar panels:
    tests/test_diagnose.py); the diverged run names its diagnosis; the sweep draws curves."""
    facts = _open_and_check(browser, more[name], artefacts, name)
    page = more[name].read_text()
    if name in ("diagnosed", "own", "comparison"):
        assert {"reading", "numbers"} <= set(facts["sections"]), facts["sections"]
        assert "gradient_flow: gradients" in page
    if name == "diagnosed":
        assert "lesion: " in page and "discriminability: " in page
    if name == "diverged":
        assert "diverged in epoch 1" in page and "non-finite" in page
    if name == "sweep":
        assert "accuracy per grid point and training curves" in [i["alt"] for i in facts["images"]]
    if name == "comparison":
        assert "training curves" in [i["alt"] for i in facts["images"]] and ">model.name<" in page


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    env = os.environ.get("DEPTHLAB_ARTEFACTS")
    return Path(env) if env else tmp_path_factory.mktemp("artefacts")


def _open_and_check(browser, page: Path, artefacts: Path, name: str) -> dict:
    """Load ``page``, check what every report page must satisfy, save a screenshot; returns the facts."""
    assert page.is_file(), page
    load = browser.open(page.resolve().as_uri())
    facts = browser.evaluate(PAGE_FACTS)
    assert facts["scripts"] == 0 and facts["text"] > 200, facts["title"]
    outside = [u[:80] for u in load.requested_urls() if urlparse(u).scheme not in ("file", "data")]
    assert outside == [], f"{name}: requests outside the page: {outside}"
    for img in facts["images"]:
        assert img["scheme"] == "data", f"{name}: figure {img['alt']!r} is not inline"
        assert img["complete"] and min(img["natural"]) > 0, f"{name}: figure {img['alt']!r} did not decode: {img}"
        assert min(img["box"]) > 0, f"{name}: figure {img['alt']!r} takes no space on the page: {img}"
    shot = browser.screenshot(artefacts / f"report_{name}.png")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert width >= 1000 and height >= 600, (width, height)
    for m in load.messages():
        if m["level"] != "error":  # shown with -rA; warnings depend on the Chromium version, errors do not
            print(f"{name}: {m['level']} from {m['source']}: {m['text'][:300]}")
    assert load.errors() == [], f"{name}: the browser reported errors: {load.errors()}"
    return facts


def test_experiment_page(browser, site, artefacts):
    facts = _open_and_check(browser, site["experiment"], artefacts, "experiment")
    assert [s for s in facts["sections"] if s in EXPERIMENT_SECTIONS] == EXPERIMENT_SECTIONS
    assert len(facts["images"]) >= 2 and "degradation" in facts["title"]


def test_run_page(browser, site, artefacts):
    facts = _open_and_check(browser, site["run"], artefacts, "run")
    assert [s for s in facts["sections"] if s in RUN_SECTIONS] == RUN_SECTIONS
    alts = [i["alt"] for i in facts["images"]]
    assert "training curves" in alts and len(alts) >= 2, alts  # curves plus the diagnostics figures


def test_index_page_links_every_page(browser, site, artefacts):
    facts = _open_and_check(browser, site["index"], artefacts, "index")
    assert facts["sections"] == ["index"]
    targets = {Path(unquote(urlparse(u).path)) for u in facts["links"]}
    assert {site["experiment"].resolve(), site["run"].resolve()} <= targets
    assert all(t.is_file() for t in targets), targets


def test_demo_page(browser, site, artefacts):
    facts = _open_and_check(browser, site["demo"], artefacts, "demo")
    assert len(facts["images"]) == 1 and "demo" in facts["title"]
