"""``anomalib-agpt serve`` end to end: the real server on a free loopback port, driven in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium; the tests
skip, saying which is missing, only where they are absent. Selenium Manager never runs (the driver
path is given), and the page must load with nothing but loopback requests: the machine is offline.

``ANOMALIB_AGPT_UPDATE_SCREENSHOT=1`` also runs the demo preset (no model options: what a user sees
first) and writes the README's screenshot, ``docs/images/web_demo.png``; with
``ANOMALIB_AGPT_SCREENSHOT_CHECKPOINT=<model.ckpt>`` (e.g. the demo's trained weave model) it serves that
checkpoint instead, with the demo's weave test images as examples, and writes ``web_demo_trained.png``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from anomalib_agpt.explanation.conversation import default_question

from .conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 1000)
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "web_demo.png"
UPDATE_SCREENSHOT = os.environ.get("ANOMALIB_AGPT_UPDATE_SCREENSHOT") == "1"
SCREENSHOT_CHECKPOINT = os.environ.get("ANOMALIB_AGPT_SCREENSHOT_CHECKPOINT")
QUERY = FIXTURES / "images" / "query_0_rgb_blob.png"
REFERENCE = FIXTURES / "images" / "reference_0_good.png"
SCORE = re.compile(r"^\d+\.\d{3} \((threshold \d+\.\d{3}|no fitted threshold)\)$")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} not found: apt-get install {package} (the CI job installs it)"
    for module in ("selenium", "gradio"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -r requirements/pinned.txt)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(options: list[str], log: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    """``python -m anomalib_agpt.apps.cli serve`` on a free loopback port; returns once the page answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "anomalib_agpt.apps.cli", "serve", *options, "--port", str(port)]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium at 1400 x 1000 CSS pixels, recording its network requests; no downloads."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()


def requested_hosts(driver: Any) -> set[str]:
    """Hosts of every http(s)/ws request the page made so far."""
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlparse(message["params"]["request"]["url"])
            if url.scheme in {"http", "https", "ws", "wss"}:
                hosts.add(url.hostname or "")
    return hosts


class Page:
    """The demo page, by the element ids the app gives its components."""

    def __init__(self, driver: Any, timeout: float) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, timeout)

    def find(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait.until(lambda _: self.all("#analyse"))

    def upload(self, component: str, path: Path) -> None:
        self.find(f"#{component} input[type=file]").send_keys(str(path))

    def clear(self, component: str, button: str = "Clear") -> None:
        """Remove the file a File (or, ``button="Remove Image"``, an Image) component holds, to take a new upload."""
        self.find(f"#{component} button[aria-label='{button}']").click()
        self.wait.until(lambda _: self.all(f"#{component} input[type=file]"))

    def status(self) -> str:
        return self.find("#status").text

    def wait_status(self, text: str) -> str:
        self.wait.until(lambda _: text in self.status())
        return self.status()

    def image_loaded(self, component: str) -> bool:
        """Whether ``#component`` shows a decoded image (not just an empty frame)."""
        images = self.all(f"#{component} img")
        return bool(images) and self.driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", images[0]
        )

    def answers(self) -> list[str]:
        return [element.text for element in self.all("#chat [data-testid=bot]") if element.text.strip()]

    def score(self) -> str:
        return self.find("#score textarea, #score input").get_attribute("value")

    def verdict(self) -> str:
        return self.find("#verdict").text

    def toasts(self) -> str:
        """The text of Gradio's error pop-ups (e.g. an upload over ``max_file_size``)."""
        return " ".join(element.text for element in self.all("[data-testid=toast-body]"))

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))


class Server(NamedTuple):
    url: str
    log: Path
    pid: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The reference set's model with its LLM, examples from the fixture images, uploads up to 1 MB."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    options = [
        f"--imagebind-checkpoint={IMAGEBIND}",
        f"--anomalygpt-checkpoint={ANOMALYGPT_DELTA}",
        "--vision-heads=4",
        "--text-heads=2",
        f"--llm={FIXTURES / 'vicuna'}",
        f"--pandagpt-checkpoint={PANDAGPT_DELTA}",
        "--class-name=bottle",
        "--max-new-tokens=12",
        f"--examples={FIXTURES / 'images'}",
        "--max_upload_mb=1",  # an underscore alias, as a --config file names it
    ]
    process, url = start_server(options, log, timeout=90)
    try:
        yield Server(url, log, process.pid)
    finally:
        stop_server(process)


def test_the_server_listens_on_loopback_only(server: Server) -> None:
    """Every listening socket of the real ``serve`` process and its children, as the OS reports them."""
    import psutil

    process = psutil.Process(server.pid)
    listening = [
        connection.laddr
        for member in [process, *process.children(recursive=True)]
        for connection in member.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    assert listening, "the server listens somewhere"
    assert urlparse(server.url).port in {address.port for address in listening}
    assert {address.ip for address in listening} <= {"127.0.0.1", "::1"}, listening


def test_upload_analyse_and_follow_up_in_a_browser(server: Server, browser: Any, tmp_path: Path) -> None:
    page = Page(browser, timeout=60)
    page.open(server.url)
    banner = page.find("#banner").text
    assert "AnomalyGPT weights" in banner
    assert "imagebind.pth" in banner
    assert "`" not in banner  # rendered as Markdown

    # bad input first: a text file named like an image gets a message, and the page keeps working
    fake = tmp_path / "not_an_image.png"
    fake.write_text("just text\n")
    page.upload("image-input", fake)
    assert "is not an image file" in page.wait_status("not_an_image.png")
    assert "Traceback" not in page.status()

    page.clear("image-input", "Remove Image")
    page.upload("image-input", QUERY)
    page.wait.until(lambda _: page.image_loaded("image-input"))  # the upload itself is previewed ...
    page.wait.until(lambda _: page.image_loaded("view"))  # ... and so is what the model sees of it
    page.upload("references-input", REFERENCE)
    page.find("#analyse").click()
    page.wait.until(lambda _: page.image_loaded("heatmap") and page.answers())
    assert page.image_loaded("mask")
    assert SCORE.match(page.score()), page.score()
    assert page.score().endswith("(no fitted threshold)")
    verdict = page.verdict()  # the answer's verdict, labelled; no score verdict without fitted thresholds
    assert re.search(r"answer: (Normal|Anomalous)", verdict), verdict
    assert "threshold:" not in verdict
    assert "no score verdict" in verdict
    chat = page.find("#chat").text
    assert default_question("bottle") in chat  # the default question (the one shown in grey) was asked
    first_answer = page.answers()[0]

    follow_up = page.find("#follow-up textarea")
    follow_up.send_keys("Where is the defect?")
    page.find("#ask").click()
    page.wait.until(lambda _: len(page.answers()) >= 2)
    assert page.answers()[0] == first_answer
    assert "Where is the defect?" in page.find("#chat").text
    assert follow_up.get_attribute("value") == ""
    page.screenshot(tmp_path / "web_demo.png")

    page.find("#ask").click()  # an empty follow-up question
    assert "The question is empty" in page.wait_status("question is empty")
    assert len(page.answers()) == 2  # the conversation stays as it was

    # a file over --max-upload-mb: Gradio refuses it before it is sent, naming the file and the limit
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1024 * 1024
    page.clear("references-input")
    page.upload("references-input", big)
    page.wait.until(lambda _: "big.png" in page.toasts())
    assert "exceed the maximum allowed size of 1.0 Mb" in page.toasts()
    assert len(page.answers()) == 2  # nothing else changed

    assert requested_hosts(browser) <= LOOPBACK  # no CDN, fonts or analytics: everything from the server
    assert (tmp_path / "web_demo.png").stat().st_size > 10_000
    log = server.log.read_text()
    assert re.search(r"anomalib-agpt serve: running on http://127\.0\.0\.1:\d+/", log)  # our line with the URL
    assert "share=True" not in log  # Gradio's share hint is not printed


@pytest.mark.skipif(not UPDATE_SCREENSHOT, reason="set ANOMALIB_AGPT_UPDATE_SCREENSHOT=1 to rewrite the README image")
def test_demo_preset_screenshot_for_the_readme(browser: Any, tmp_path: Path) -> None:
    """No model options: the demo preset, an example picked from the page, two questions -> the README's image."""
    options, target, banner = [f"--demo-dir={tmp_path / 'demo'}"], SCREENSHOT, "Demo preset"
    if SCREENSHOT_CHECKPOINT:  # a trained model, with the demo data's test images of its category as examples
        checkpoint = Path(SCREENSHOT_CHECKPOINT).resolve()
        examples = next(parent for parent in checkpoint.parents if (parent / "data").is_dir()) / "data" / "weave"
        options = [
            "--checkpoint",
            str(checkpoint),
            "--examples",
            str(examples / "test" / "scratch"),
            "--class-name",
            "weave",
        ]
        target, banner = SCREENSHOT.with_name("web_demo_trained.png"), "trained checkpoint"
    process, url = start_server(options, tmp_path / "server.log", timeout=180)
    try:
        page = Page(browser, timeout=120)
        page.open(url)
        assert banner in page.find("#banner").text
        page.all("#examples button")[0].click()  # the first example: a scratch
        page.wait.until(lambda _: page.image_loaded("view"))
        page.find("#analyse").click()
        page.wait.until(lambda _: page.image_loaded("heatmap") and page.answers())
        page.find("#follow-up textarea").send_keys("Where is the defect?")
        page.find("#ask").click()
        page.wait.until(lambda _: len(page.answers()) >= 2)
        assert SCORE.match(page.score())
        page.screenshot(target)
    finally:
        stop_server(process)
