"""Test helpers shared by the integration and notebook tests."""
from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from registry_mirror.http_clients import client_from

from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.state import StackState
from registry_mirror.parameters import Settings, load_params_file
from registry_mirror.processes import ProcessRecord, free_port, gone, wait_until

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
])


def local_test_settings(state_dir: str) -> Settings:
    """params/local.yaml on free ports and a private state dir, so a user's own stack is never touched."""
    base = load_params_file("params/local.yaml")
    assert base.local is not None
    ports = set()
    while len(ports) < 4:
        ports.add(free_port())
    public, hub, token, s3 = sorted(ports)
    local = base.local.model_copy(update={"public_port": public, "hub_port": hub, "hub_token_port": token,
                                          "s3_port": s3, "state_dir": state_dir})
    upstream = base.upstream.model_copy(update={"url": f"http://127.0.0.1:{hub}"})
    return base.model_copy(update={"local": local, "upstream": upstream})


def settings_as_parameters(settings: Settings) -> dict[str, Any]:
    """The settings as papermill parameters (what `-f params/<env>.yaml` would inject)."""
    return settings.model_dump(mode="json")


def client(source: str = "127.0.0.1") -> requests.Session:
    return client_from(source)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class StackWatch:
    """Every process a test stack recorded while the tests ran, so teardown checks each one gone by PID.

    The stack's state names only what runs now; a test that replaces instances or kills a component
    leaves earlier records behind, so the watch looks after every test (`observe_stacks`) and once
    more at the end, and also finds anything still running from the stack's folder that it never saw.
    """

    def __init__(self, platform: LocalPlatform) -> None:
        self.platform = platform
        self.seen: dict[tuple[str, int], ProcessRecord] = {}

    def observe(self) -> None:
        for record in StackState.load(self.platform.paths.state_file).processes.values():
            self.seen[(record.name, record.pid)] = record

    def wake(self) -> None:
        """Frozen processes (SIGSTOP) cannot act on a stop: wake them first."""
        for record in self.seen.values():
            if record.alive():
                os.kill(record.pid, signal.SIGCONT)

    def assert_all_gone(self) -> None:
        self.observe()
        left = [f"{r.name} (pid {r.pid})" for r in self.seen.values() if not gone(r)]
        strays = _running_from(self.platform.paths.root)
        for pid in strays:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left running: {left}"
        assert not strays, f"processes the stack forgot, still running from {self.platform.paths.root}: {strays}"


_WATCHED: list[StackWatch] = []


def observe_stacks() -> None:
    """Record what every open test stack runs now (tests/conftest.py calls it after each test)."""
    for watch in _WATCHED:
        watch.observe()


@contextmanager
def tracked_stack(settings: Settings, *, deploy: Callable[[LocalPlatform], object] | None = None,
                  teardown: Callable[[LocalPlatform], object] | None = None) -> Iterator[LocalPlatform]:
    """A stack deployed for tests (by `deploy`, else `LocalPlatform.deploy`); afterwards `teardown` runs
    (if given), then `down()` mops up, and every process the stack ever recorded is checked gone."""
    platform = LocalPlatform(settings, settings.load_security_rules())
    watch = StackWatch(platform)
    _WATCHED.append(watch)
    try:
        try:
            (deploy or LocalPlatform.deploy)(platform)
        finally:
            watch.observe()
        yield platform
    finally:
        _WATCHED.remove(watch)
        watch.observe()
        watch.wake()
        try:
            if teardown is not None:
                teardown(platform)
        finally:
            platform.down()
            watch.assert_all_gone()


def _running_from(folder: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in argv and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


# What a checkout holds that is not the project: the shared environments, state, outputs, caches.
NOT_COPIED = {".git", ".venv", ".tools", ".state", ".out", "lab", "__pycache__", ".pytest_cache", ".hypothesis",
              ".ipynb_checkpoints", "build", "policy-results.json"}
LINKED = (".venv", ".tools")


def throwaway_copy(root: Path, copy: Path) -> Path:
    """The tracked project at `copy`, with .venv and .tools linked (not rebuilt): recipes run there
    write their own .state, .out and lab/, never the developer's."""
    import shutil

    shutil.copytree(root, copy, symlinks=True,
                    ignore=lambda _, names: [n for n in names if n in NOT_COPIED or n.endswith(".egg-info")])
    for name in LINKED:
        (copy / name).symlink_to((root / name).resolve())
    return copy


@contextmanager
def make_lab(project: Path, *make_vars: str) -> Iterator[str]:
    """`make lab` as the README documents it, run in `project` (a throwaway copy) on a free loopback
    port; yields the URL it printed, once JupyterLab answers; stopped by its process group after.
    -o bootstrap -o venv: the copy shares the venv and tools this run was bootstrapped with."""
    import subprocess

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(project / "lib")}
    with open(project / "make-lab.log", "wb") as log:
        lab = subprocess.Popen(["make", "-s", "-o", "bootstrap", "-o", "venv", "lab", f"LAB_PORT={port}", *make_vars],
                               cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def printed() -> str | None:
            text = (project / "make-lab.log").read_text(errors="replace")
            assert lab.poll() is None, f"make lab exited {lab.returncode}: {text[-2000:]}"
            return next((word for word in text.split() if word.startswith("http://127.0.0.1:")), None)
        url = wait_until(printed, timeout=120, what="make lab's URL", interval=0.2)
        token = url.partition("token=")[2]

        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/api/status",
                                    headers={"Authorization": f"token {token}"}, timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_until(up, timeout=60, what="JupyterLab", interval=0.2)
        yield url
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(10)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Headless Chromium driven by Selenium through Debian's chromedriver; quit after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def run_all_cells(browser: Any, notebook_url: str, *, until: str, timeout: float = 180) -> str:
    """Open a notebook in JupyterLab, click Run > Run All Cells, and wait until `until` shows in the
    notebook's outputs; returns the notebook's text as the page holds it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(notebook_url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
    # The kernel must be up before Run All, or the run waits on it anyway; the status bar says so.
    wait.until(lambda b: "Idle" in b.find_element(By.ID, "jp-main-statusbar").text)
    run_menu = wait.until(lambda b: [e for e in b.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                                     if e.text == "Run"])
    run_menu[0].click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "li.lm-Menu-item[data-command='runmenu:run-all']"))[0].click()

    def text(b: Any) -> str:
        # textContent: cells off screen are in the DOM but not painted, so `.text` would miss them.
        return b.execute_script("return document.querySelector('.jp-Notebook').textContent") or ""
    WebDriverWait(browser, timeout).until(lambda b: until in text(b) or "Traceback" in text(b))
    return text(browser)


# 1.2e+09, 5E-3; not a hex id (a CF GUID's "8e883903-...", a digest) that happens to look like one.
SCIENTIFIC = r"(?<![\w.:-])\d(\.\d+)?[eE][+-]?\d+(?![\w.:-])"


def first_screen(executed: Path, folder: Path) -> str:
    """An executed runbook as an operator first sees it: exported to HTML without its code
    (`jupyter nbconvert --no-input`), opened in headless Chromium 1400x800, screenshot kept in `folder`.
    Asserts the verdict is on that first screen, whole (not cut or wrapped out of its box), and no number
    there is in scientific notation; returns the first screen's text."""
    import re

    import nbformat
    from nbconvert import HTMLExporter
    from selenium.webdriver.common.by import By

    folder.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                           exclude_output_prompt=True).from_notebook_node(nbformat.read(executed, as_version=4))
    page = folder / f"{executed.stem}.html"
    page.write_text(body)
    with chromium(folder / "chromium") as browser:
        browser.set_window_size(1400, 800)
        browser.get(page.as_uri())
        browser.save_screenshot(str(folder / f"{executed.stem}-first-screen.png"))
        boxes = browser.find_elements(By.CSS_SELECTOR, "[data-runbook-verdict]")
        assert boxes, f"{executed.name}: no runbook summary in its output"
        headline = boxes[0]
        geometry = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return [r.top, r.bottom, arguments[0].scrollWidth, arguments[0].clientWidth, window.innerHeight];",
            headline)
        top, bottom, scroll_width, client_width, height = geometry
        verdict = headline.text.strip()
        assert 0 <= top and bottom <= min(800, height), f"{executed.name}: verdict not on the first screen {geometry}"
        assert scroll_width <= client_width and not verdict.endswith(("...", "…")), f"{executed.name}: verdict cut"
        assert not verdict.split(" ", 1)[-1].startswith("RUNNING"), f"{executed.name}: verdict never filled in"
        screen = browser.execute_script(
            "const out = []; const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);"
            "while (walker.nextNode()) { const n = walker.currentNode; const range = document.createRange();"
            "range.selectNodeContents(n); const r = range.getBoundingClientRect();"
            "if (r.height && r.top < arguments[0]) out.push(n.textContent); } return out.join(' ');", 800)
    scientific = re.search(SCIENTIFIC, screen)
    assert scientific is None, f"{executed.name}: scientific notation on the first screen: {scientific.group(0)}"
    return screen
