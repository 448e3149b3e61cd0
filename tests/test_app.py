"""The web app (`python -m segearth_jax.app`) as a user meets it: started on 127.0.0.1 on a tiny
model trained here, driven by a headless Chromium (Selenium + Debian's chromium and
chromium-driver, nothing downloaded) and called through `gradio_client`; the server is stopped
whatever happens.

The model: configs/tiny.py trained for STEPS steps on a few easy synthetic scenes, enough for
greedy generation to emit a `[SEG]` (an untrained model emits none), so the masks shown come
from the model. The browser test saves its screenshot in the test's folder, and into
docs/app.png (the README's picture) when UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

import tests.conftest  # noqa: F401  (the offline environment of conftest)

gradio_client = pytest.importorskip("gradio_client", reason='needs the [app] extra')

ROOT = Path(__file__).resolve().parents[1]
EASY = ("semantic", "single", "explicit", "short")
# Measured (2-core CPU): after 30 steps every semantic test record's answer has a [SEG] (text
# loss 7 -> 2); 40 for a margin (~5 s more).
N_RECORDS, STEPS, LR = 30, 40, 2e-3
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """A tiny model trained on synthetic scenes (export dir) + a held-out (image, instruction)."""
    from configs import tiny
    from data import builders, synthetic
    from segearth_jax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("app")
    synthetic.generate(root / "raw", n=N_RECORDS, seed=0, object_scale=2.0, subsets=EASY)
    builders.build("synthetic", manual_dir=root / "raw", data_dir=root / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(root / "tfds")
    config.data.max_len, config.data.max_prompt_len = 96, 80  # short records
    config.data.batch_size = 4
    config.optim.lr = LR
    config.total_steps = config.checkpoint.every = config.log_every = STEPS
    train_and_evaluate(config, root / "run")
    record = json.loads((root / "raw/test/annotations/semantic.json").read_text())[0]
    return dict(root=root, export=root / "run/export", examples=root / "raw/test",
                image=root / "raw/test/images" / record["image_name"],
                instruction=record["description"])


def test_app_help_and_helpers(tmp_path):
    """The command's flags; examples from a LaSeRS-layout folder; display-only downscaling."""
    from segearth_jax import app

    p = subprocess.run([sys.executable, "-m", "segearth_jax.app", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for flag in ("--checkpoint", "--host", "--port", "--examples", "--queue-size"):
        assert flag in p.stdout
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "images" / name), np.zeros((4, 4, 3), np.uint8))
    rec = lambda name, text: {"image_name": name, "description": text}
    (tmp_path / "annotations/x.json").write_text(json.dumps(
        [rec("a.png", "Find a."), rec("missing.png", "?"), rec("b.png", "Find b.")]))
    (tmp_path / "annotations/y.json").write_text(json.dumps([rec("a.png", "Find a.")]))
    (tmp_path / "annotations/z.json").write_text("{not json")
    assert app.find_examples(tmp_path) == [[str(tmp_path / "images/a.png"), "Find a."],
                                           [str(tmp_path / "images/b.png"), "Find b."]]
    assert app.find_examples(tmp_path / "absent") == []
    big = np.zeros((3000, 1500, 3), np.uint8)
    assert app.for_display(big).shape == (app.DISPLAY_SIDE, app.DISPLAY_SIDE // 2, 3)
    assert app.for_display(big[:100, :]).shape == (68, 1024, 3)  # 100 x 1500 * 1024 / 1500
    small = np.zeros((256, 192, 3), np.uint8)
    assert app.for_display(small) is small


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model):
    """`python -m segearth_jax.app` on a free loopback port: its URL, once it answers; stopped
    (SIGTERM, then SIGKILL) at the end, whatever happened."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = model["root"] / "app.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(model["root"] / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "segearth_jax.app", "--checkpoint", str(model["export"]),
             "--host", "127.0.0.1", "--port", str(port), "--examples", str(model["examples"]),
             "--max-new-tokens", "32"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, f"the app exited ({proc.returncode}):\n" + \
                log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the app did not start:\n" + \
                log.read_text()[-4000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield dict(url=url, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _masks(result: dict) -> np.ndarray:
    from segearth_jax import visualize

    return visualize.rle_to_masks(result["masks"], tuple(result["image_size"]))


def test_app_api_segments_and_refuses_bad_files(model, server, tmp_path):
    from gradio_client import Client, handle_file

    from segearth_jax import visualize
    from segearth_jax.predict import MAX_IMAGE_PIXELS

    client = Client(server["url"], verbose=False, download_files=str(tmp_path / "downloads"))
    assert "/segment" in client.view_api(return_format="dict",
                                         print_info=False)["named_endpoints"]
    image = _rgb(model["image"])
    answer, legend, overlay, masks, heat, result, status = client.predict(
        handle_file(model["image"]), model["instruction"], api_name="/segment")
    assert "[SEG]" in answer, f"the tiny model emitted no [SEG] ({answer!r}): train longer?"
    result = json.loads(Path(result).read_text())
    assert result["answer"].strip() == answer and result["instruction"] == model["instruction"]
    assert result["image_size"] == list(image.shape[:2])
    found = _masks(result)
    names = result["targets"]
    assert len(found) == len(names) == len(masks) == len(heat) == answer.count("[SEG]")
    assert found.any(), "every mask is empty"
    # The overlay is the masks of the JSON drawn on the image, pixel for pixel (PNG).
    np.testing.assert_array_equal(_rgb(overlay), visualize.overlay(image, found, names))
    for i, (m, name) in enumerate(zip(masks, names, strict=True)):
        np.testing.assert_array_equal(_rgb(m["image"])[..., 0], found[i] * 255)
        assert name in m["caption"] and name in legend
    assert "target(s)" in status

    # Requests are queued: two at once both come back, with the same answer.
    jobs = [client.submit(handle_file(model["image"]), model["instruction"],
                          api_name="/segment") for _ in range(2)]
    assert [j.result(timeout=120)[0] for j in jobs] == [answer, answer]

    # Gray is used as RGB (as predict does); bad files are refused with predict's messages.
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    assert "target(s)" in client.predict(handle_file(gray), model["instruction"],
                                         api_name="/segment")[-1]
    (tmp_path / "notes.txt").write_text("not an image\n")
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((8, 8, 3), np.uint16))
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((side, side), np.uint8))
    for name, message in (("notes.txt", "does not decode as an image"),
                          ("deep.png", "only 8-bit images are supported"),
                          ("huge.png", "megapixels: for a large raster use `predict --scene`")):
        out = client.predict(handle_file(tmp_path / name), model["instruction"],
                             api_name="/segment")
        assert out[0] == "" and out[5] is None, (name, out)
        assert f"Cannot use this file.** {name}: " in out[-1] and message in out[-1], out[-1]
    assert "Type an instruction" in client.predict(handle_file(model["image"]), " ",
                                                   api_name="/segment")[-1]
    assert "Traceback" not in server["log"].read_text()


@pytest.fixture
def browser():
    """Headless Chromium through Debian's chromedriver (no browser download)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1200", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_app_in_browser(model, server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = lambda seconds, cond: WebDriverWait(browser, seconds).until(lambda d: cond())
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)
    browser.get(server["url"])
    upload = wait(60, lambda: find("#upload input[type=file]"))

    # A file that is not an image: a clear message in the page.
    (tmp_path / "notes.txt").write_text("not an image\n")
    upload.send_keys(str(tmp_path / "notes.txt"))
    wait(60, lambda: "Cannot use this file" in find("#status").text)
    assert "notes.txt: does not decode as an image" in find("#status").text
    for x in browser.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']"):
        x.click()

    # The test image and its instruction: answer, overlay, masks, heatmaps, result JSON.
    wait(30, lambda: find("#upload input[type=file]")).send_keys(str(model["image"]))
    wait(60, lambda: "pixels" in find("#status").text)
    find("#instruction textarea").send_keys(model["instruction"])
    find("#run").click()
    wait(180, lambda: find("#answer textarea").get_attribute("value")
         or "Cannot" in find("#status").text)
    answer = find("#answer textarea").get_attribute("value")
    assert "[SEG]" in answer, (answer, find("#status").text)
    wait(30, lambda: browser.find_elements(By.CSS_SELECTOR, "#result a[href]"))
    result = json.loads(_fetch(find("#result a[href]").get_attribute("href")))
    masks = _masks(result)
    overlay = cv2.imdecode(np.frombuffer(_fetch(find("#overlay img").get_attribute("src")),
                                         np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    image = _rgb(model["image"])
    assert overlay.shape == image.shape and masks.any()
    diff = np.abs(overlay.astype(int) - image).sum(-1)
    inside = masks.any(0)
    # Blended with the mask's colour inside; unchanged away from the masks (outlines, names).
    assert (diff[inside] > 0).mean() > 0.9, (diff[inside] > 0).mean()
    far = ~cv2.dilate(inside.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    if far.sum() > 100:  # (unless the mask covers nearly everything)
        assert (diff[far] == 0).mean() > 0.9, (diff[far] == 0).mean()
    n = len(result["targets"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#masks img")) >= n
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attention img")) >= n
    assert all(name in find("#legend").text for name in result["targets"])
    assert "Traceback" not in browser.page_source

    browser.save_screenshot(str(tmp_path / "app.png"))
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "app.png", ROOT / "docs" / "app.png")
