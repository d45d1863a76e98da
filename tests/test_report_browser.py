"""The demo run's report in a real browser: headless Chromium (the system's, not a downloaded one) driven by
Playwright. `.ci/run` installs Chromium when it is missing; elsewhere the test is skipped without one."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers import run_config

from cnnvis_cli.pipeline import run
from cnnvis_cli.report import write_report
from cnnvis_cli.run_dir import panel_path

pytestmark = pytest.mark.slow  # a demo run, in a real browser

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)

LOAD_EVERY_IMAGE = """async () => Promise.all(Array.from(document.querySelectorAll('#gallery img')).map(
  (shown) => new Promise((done) => {
  const image = new Image();
  image.onload = () => done(image.naturalWidth);
  image.onerror = () => done(0);
  image.src = shown.src;
})))"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing; .ci/run installs it")
        pytest.skip("no Chromium here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_demo_report_in_chromium(browser, tmp_path: Path) -> None:
    result = run(run_config("dataset.limit=200", "technique=[gradcam,integrated_gradients]",
                            "technique.integrated_gradients.steps=8"), tmp_path / "run")
    with (tmp_path / "run" / "selected.csv").open(newline="") as file:
        selected = list(csv.DictReader(file))
    assert len(selected) == result.summary["selection"]["selected"] > 5
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((tmp_path / "run" / "report.html").as_uri())
    assert page.locator("#gallery .card").count() == len(selected)  # one card per selected sample

    widths = page.evaluate(LOAD_EVERY_IMAGE)
    assert len(widths) == len(selected) and all(width > 0 for width in widths)  # every image loads

    truth = Counter(row["label_name"] for row in selected).most_common(1)[0][0]
    page.select_option("#truth", truth)
    shown = page.locator("#gallery .card:visible")
    assert shown.count() == sum(row["label_name"] == truth for row in selected)
    assert all(card.get_attribute("data-truth") == truth for card in shown.all())
    assert page.locator("#shown").inner_text() == str(shown.count())

    page.select_option("#truth", "")
    page.select_option("#sort", "loss:desc")
    losses = [float(card.get_attribute("data-loss")) for card in page.locator("#gallery .card").all()]
    assert losses == sorted(losses, reverse=True)

    page.locator("a.confusion").first.click()  # a confusion link filters the gallery to its pairs
    link = page.locator("a.confusion").first
    pair = (link.get_attribute("data-truth"), link.get_attribute("data-predicted"))
    shown = page.locator("#gallery .card:visible").all()
    assert shown and all((card.get_attribute("data-truth"), card.get_attribute("data-predicted")) == pair
                         for card in shown)

    # the gallery shows each panel at its own size where the page is wide enough
    first = page.locator("#gallery .card:visible img").first
    first.scroll_into_view_if_needed()
    natural, shown = first.evaluate("(image) => [image.naturalWidth, image.clientWidth]")
    assert natural > 0 and shown == min(natural, shown) and shown >= min(natural, 1300)

    visible = page.locator("#gallery .card:visible")
    captions = [card.locator(".caption").inner_text() for card in visible.all()]
    first.click()  # the viewer opens over the page, the panel at its own size, scrollable
    viewer = page.locator("#viewer")
    assert viewer.is_visible() and viewer.locator(".caption").inner_text() == captions[0]
    image = viewer.locator(".frame img")
    page.wait_for_function("() => document.querySelector('#viewer .frame img').complete")
    assert image.evaluate("(image) => image.clientWidth === image.naturalWidth && image.naturalWidth > 0")
    link = viewer.locator("#viewer-file").get_attribute("href")
    assert link == first.get_attribute("src") and (tmp_path / "run" / link).is_file()
    page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
    if len(captions) > 1:  # previous and next follow the gallery as filtered, by button and by arrow key
        viewer.locator("#next").click()
        assert viewer.locator(".caption").inner_text() == captions[1]
        page.keyboard.press("ArrowLeft")
        assert viewer.locator(".caption").inner_text() == captions[0]
        page.keyboard.press("ArrowRight")
        assert viewer.locator(".caption").inner_text() == captions[1]
    page.keyboard.press("Escape")
    assert not viewer.is_visible()

    page.select_option("#truth", "")
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("nav.sections a", has_text="gallery").click()  # the navigation takes the reader to a section
    assert abs(page.locator("#gallery-title").evaluate("(heading) => heading.getBoundingClientRect().top")) < 50

    # a run that lacks a panel (stopped, or rebuilt after files went): the viewer steps over its card
    cards = [(row["index"], row["sample_id"]) for row in selected[:3]]
    assert len(cards) == 3
    missing = tmp_path / "run" / panel_path(int(cards[1][0]), cards[1][1])
    missing.unlink()
    write_report(tmp_path / "run")
    page.goto((tmp_path / "run" / "report.html").as_uri())
    first_card, third_card = (page.locator("#gallery .card").nth(position) for position in (0, 2))
    first_card.locator("img").click()
    page.keyboard.press("ArrowRight")
    assert viewer.locator(".caption").inner_text() == third_card.locator(".caption").inner_text()
    assert (tmp_path / "report.png").stat().st_size > 10_000 and errors == []

