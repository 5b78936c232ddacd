"""The explorer in a real browser (Playwright driving Debian's chromium): pages render without
console errors and load nothing from outside, counts match the catalog, the slider prunes,
clicking fills the panel, pins survive a reload, 3,000 elements draw, labels reach the catalog.

Run with SCREENSHOTS=DIR to save a screenshot of each page (the README's come from there)."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from circuitlab.catalog import open_catalog
from circuitlab.viz.graphview import prune_view
from circuitlab.viz.sources import circuit_view

IDLE = "() => !document.querySelector('[data-dash-is-loading]')"


def visit(page, path: str) -> None:
    page.goto(page.base + path)
    page.wait_for_selector("#page > *", state="attached", timeout=60_000)
    page.wait_for_function(IDLE, timeout=60_000)


def counts(page) -> tuple[int, int]:
    page.wait_for_function("() => document.querySelector('#n-nodes')?.innerText", timeout=60_000)
    page.wait_for_function(IDLE, timeout=60_000)
    return int(page.inner_text("#n-nodes")), int(page.inner_text("#n-edges"))


def graph_png(page, tries: int = 3) -> bytes:
    """A screenshot of the graph once the page is idle; Dash may swap the graph's element
    once more after writing the URL (seen on a loaded machine), so a detached one is retried."""
    for attempt in range(tries):
        page.wait_for_function(IDLE, timeout=60_000)
        try:
            return page.locator("#graph").screenshot(timeout=60_000)
        except Exception:  # playwright's Error: element not attached to the DOM
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def shoot(page, name: str) -> None:
    if os.environ.get("SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOTS"], f"{name}.png"), full_page=True)


# Dash applies a callback's outputs and its error in separate renders: wait for the words.
BANNER_SAYS = """(words) => {
    const banner = document.querySelector('#error-banner');
    const text = banner ? banner.innerText.trim() : '';
    return !!banner && banner.offsetParent !== null && text !== '' && text.includes(words);
}"""


def feature_point(page):
    """The first marker of the graph's feature trace."""
    trace = page.locator("#graph .scatterlayer .trace").filter(has=page.locator(".point"))
    return trace.nth(trace.count() - 2).locator(".point").first


def test_every_page_renders_without_errors_or_outside_requests(page, world):
    pages = {
        "catalog": ("/", "#circuits"),
        "lineage": (f"/lineage/{world.cid}", "#lineage-graph .point"),
        "circuit": (f"/circuit/{world.cid}?node=1", "#graph .point"),
        "input": (f"/circuit/{world.cid}?mode=input&input=3,4", "#graph .point"),
        "training": (f"/training?runs={world.run}", "#curves .scatterlayer .trace"),
    }
    for name, (path, selector) in pages.items():
        visit(page, path)
        page.wait_for_selector(selector, timeout=60_000)
        assert page.inner_text("#error-banner") == "", name
        shoot(page, name)
    assert page.errors == []
    hosts = {re.match(r"\w+://([^/]+)", url)[1] for url in page.requests if "://" in url}
    assert hosts == {page.base.split("//")[1]}


def test_catalog_filters_and_rows_open_circuits(page, world):
    visit(page, "/")
    assert page.locator("#circuit-rows tr").count() == 4
    page.fill("#f-text", "moved")
    page.press("#f-text", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#circuit-rows tr').length == 1")
    with open_catalog(world.url) as cat:
        assert [h.id for h in cat.search(text="moved")] == [world.gone]
    page.locator("#circuit-rows tr td a").nth(2).click()  # the label cell
    page.wait_for_selector("#graph .point", timeout=60_000)
    assert page.url.endswith(f"/circuit/{world.gone}") or f"/circuit/{world.gone}?" in page.url


def test_counts_equal_the_catalog_after_pruning(page, world):
    with open_catalog(world.url) as cat:
        weights = sorted(abs(e.weight) for e in cat.get(world.cid).edges)
        threshold = weights[len(weights) // 2]
        expected = cat.graph(world.cid, min_abs_weight=threshold)
    visit(page, f"/circuit/{world.cid}?node=1&edge={threshold!r}")
    assert counts(page) == (len(expected.nodes), len(expected.edges))


def test_slider_prunes_to_the_expected_count(page, world):
    with open_catalog(world.url) as cat:
        view = circuit_view(cat.get(world.cid))
    visit(page, f"/circuit/{world.cid}?node=1")
    full = prune_view(view, 1.0, 0.0)
    assert counts(page) == (len(full.nodes), len(full.edges))
    box = page.locator("#node-slider input[type=number]")
    box.fill("0.3")
    box.press("Tab")  # the direct input commits when it loses focus
    page.wait_for_function("() => location.search.includes('node=0.3')", timeout=30_000)
    expected = prune_view(view, 0.3, 0.0)
    assert counts(page) == (len(expected.nodes), len(expected.edges))
    thumb = page.locator("#edge-slider [role=slider]")
    thumb.focus()
    for _ in range(40):  # 40 of the slider's 100 steps up the log |weight| scale
        thumb.press("ArrowRight")
    page.wait_for_function("() => location.search.includes('edge=')", timeout=30_000)
    page.wait_for_function(IDLE, timeout=30_000)
    threshold = float(re.search(r"edge=([^&]+)", page.url)[1])
    expected = prune_view(view, 0.3, threshold)
    assert len(expected.edges) < len(prune_view(view, 0.3, 0.0).edges)
    assert counts(page) == (len(expected.nodes), len(expected.edges))


def test_click_fills_the_panel_and_pins_survive_a_reload(page, world):
    visit(page, f"/circuit/{world.cid}?node=1")
    counts(page)
    feature_point(page).click(force=True)
    page.wait_for_selector("#panel-title", timeout=60_000)
    clicked = re.search(r"clicked=([^&]+)", page.url)[1]
    with open_catalog(world.url) as cat:
        record = cat.get(world.cid)
    view = circuit_view(record)
    assert page.inner_text("#panel-title") == view.labels[view.position(clicked)]
    page.wait_for_selector("#top-inputs", timeout=60_000)
    page.wait_for_selector("#heatmap .main-svg", timeout=60_000)
    shoot(page, "panel")
    page.click("#pin")
    page.wait_for_function("() => location.search.includes('pinned=')", timeout=30_000)
    page.reload()
    page.wait_for_function(IDLE, timeout=60_000)
    page.wait_for_selector("#panel-title", timeout=60_000)
    assert f"pinned={clicked}" in page.url
    assert page.inner_text("#pin") == "Unpin"
    page.fill("#label-input", "edited in the browser")
    page.click("#save-label")
    page.wait_for_function(
        "() => document.querySelector('#label-status')?.innerText.includes('saved')",
        timeout=30_000,
    )
    fid = view.catalog_ids[view.position(clicked)]
    with open_catalog(world.url) as cat:
        labels = {n.feature.id: n.feature.label for n in cat.get(world.cid).nodes}
    assert labels[fid] == "edited in the browser"


def test_a_saved_subgraph_comes_back_from_the_catalog(page, world):
    visit(page, f"/circuit/{world.cid}?node=1")
    counts(page)
    feature_point(page).click(force=True)
    page.wait_for_selector("#panel-title", timeout=60_000)
    clicked = re.search(r"clicked=([^&]+)", page.url)[1]
    page.click("#pin")
    page.wait_for_function("() => location.search.includes('pinned=')", timeout=30_000)
    page.wait_for_function(IDLE, timeout=60_000)  # the pin's callbacks done
    page.fill("#save-name", "saved in the browser")
    page.click("#save-sub")
    saved = {}
    for _ in range(120):  # the save is a callback: poll the catalog until it has landed
        with open_catalog(world.url) as cat:
            saved = cat.get(world.cid).metadata.extra.get("subgraphs", {})
        if "saved in the browser" in saved:
            break
        page.wait_for_timeout(250)
    assert saved["saved in the browser"]["pinned"] == [clicked]
    visit(page, f"/circuit/{world.cid}")  # a fresh view: nothing pinned
    assert "pinned=" not in page.url
    page.click("#saved-subgraphs")
    page.click("text=saved in the browser")
    page.wait_for_function("() => location.search.includes('pinned=')", timeout=30_000)
    assert f"pinned={clicked}" in page.url and "sub=1" in page.url


def test_three_thousand_elements_draw(page, world):
    visit(page, f"/circuit/{world.big}?node=1")
    nodes, edges = counts(page)
    assert nodes + edges == 3000
    assert page.is_hidden("#cap-note")
    image = Image.open(io.BytesIO(graph_png(page))).convert("RGB")
    r, g, b = np.asarray(image).astype(int).transpose(2, 0, 1)
    assert (np.minimum(np.minimum(r, g), b) < 200).mean() > 0.05  # ink on over 5% of the area
    assert (b > r + 40).sum() > 1000 and (r > b + 40).sum() > 1000  # edges of both signs
    shoot(page, "large")


def test_larger_graphs_are_capped_with_a_note(page, world):
    visit(page, f"/circuit/{world.huge}?node=1")
    nodes, edges = counts(page)
    assert nodes + edges <= 3000
    assert page.is_visible("#cap-note")
    assert "strongest edges" in page.inner_text("#cap-note")


def test_gone_run_and_unknown_ids_are_messages(page, world):
    visit(page, f"/circuit/{world.gone}?mode=input&input=1,2")
    page.wait_for_selector("#graph .point", timeout=60_000)
    assert "is missing" in page.inner_text("#mode-note")
    feature_point(page).click(force=True)
    page.wait_for_selector("#panel-note", timeout=60_000)
    assert "need the run directory" in page.inner_text("#panel-note")
    page.click("#show")  # asking for an input graph again: a message, and the view stays
    page.wait_for_function(BANNER_SAYS, arg="is missing", timeout=30_000)
    assert page.is_checked("#mode input[value=circuit]")
    visit(page, "/circuit/ffffffffffff")
    page.wait_for_function(BANNER_SAYS, arg="no record", timeout=30_000)
    visit(page, "/lineage/nope")
    page.wait_for_function(BANNER_SAYS, arg="", timeout=30_000)
    assert page.inner_text("#error-banner")
    assert not [e for e in page.errors if "Traceback" in e]


def test_saving_a_subgraph_without_pins_is_a_banner(page, world):
    visit(page, f"/circuit/{world.cid}")
    page.fill("#save-name", "nothing pinned")
    page.click("#save-sub")
    page.wait_for_function(BANNER_SAYS, arg="pin nodes", timeout=30_000)
    with open_catalog(world.url) as cat:
        saved = cat.get(world.cid).metadata.extra.get("subgraphs", {})
    assert "nothing pinned" not in saved


@pytest.mark.parametrize("text", ["x", "1, 99"])
def test_bad_input_value_is_a_banner(page, world, text):
    visit(page, f"/circuit/{world.cid}")
    page.fill("#values", text)
    page.click("#show")
    page.wait_for_function(BANNER_SAYS, arg="", timeout=30_000)
    page.wait_for_function(IDLE, timeout=60_000)
    assert re.search("give 2 values|0..10", page.inner_text("#error-banner"))
