"""Fixtures of the explorer tests: a tiny real circuit (add_mod_11, a small model trained for a
few steps, extracted with small settings) and synthetic circuits of 3,000 and 4,000 elements
whose run directory does not exist, all in one SQLite catalog; the app served from a thread;
a Playwright browser on Debian's chromium."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("dash")

from circuitlab.catalog import open_catalog, synthetic  # noqa: E402
from circuitlab.extraction.pipeline import ExtractConfig, extract  # noqa: E402
from circuitlab.extraction.transcoder import TranscoderConfig  # noqa: E402
from circuitlab.training import RunSpec, get_recipe, train_stack  # noqa: E402
from circuitlab.viz import Sources, create_app, make_server  # noqa: E402

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))
CHROMIUM = os.environ.get("CIRCUITLAB_CHROMIUM", "/usr/bin/chromium")


class World:
    """The catalog the tests browse: `url`; the tiny circuit `cid` (runnable, from `run`); `gone`,
    a copy of it whose run directory was deleted; the synthetic `big` (exactly 3,000 elements)
    and `huge` (over the cap) circuits, which have no run at all."""

    def __init__(self, root: Path, url: str, run: Path, ids: dict[str, str]) -> None:
        self.root, self.url, self.run = root, url, run
        self.cid, self.gone, self.big, self.huge = (ids[k] for k in ("cid", "gone", "big", "huge"))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("viz")
    url = f"sqlite:///{root / 'catalog.db'}"
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=120, model=SMALL)
    run = root / "runs" / "add_mod_11" / "fast-seed0"
    train_stack([RunSpec("add_mod_11", recipe, 0, run)], threads=1)
    cid = extract(run, url, CONFIG).circuit_id
    moved = root / "moved-run"
    shutil.copytree(run, moved)
    with open_catalog(url) as cat:
        gone = cat.get(cid)
    gone.metadata.source_run = str(moved)
    gone.tags.labels = ["moved"]  # another circuit (id) over the same model and files
    shutil.rmtree(moved)
    model = synthetic.model(seed=7)
    big = synthetic.circuit(model, seed=1, n_features=500, n_edges=2500)
    huge = synthetic.circuit(model, seed=2, n_features=600, n_edges=4000)
    with open_catalog(url) as cat:
        cat.put_many([gone, synthetic.task(), model, big, huge])
    ids = {"cid": cid, "gone": gone.id, "big": big.id, "huge": huge.id}
    return World(root, url, run, ids)


@pytest.fixture(scope="session")
def server(world):
    """The explorer over the world's catalog on a free port, served from a thread."""
    app = create_app(Sources(world.url, runs_dir=world.root / "runs"))
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.port}"
    srv.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser():
    """Chromium through Playwright; skipped where either is missing, except on CI (CI=true),
    where .ci/run installs chromium and a skip would hide a broken setup."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {CHROMIUM} (.ci/run installs it with apt)")
        pytest.skip(f"no chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    """A fresh page of 1400x950 that records console errors, page errors and every request."""
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    pg = context.new_page()
    pg.errors = []
    pg.requests = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.base = server
    yield pg
    context.close()
