"""Screenshot of the inspection panel in a real browser: ns-viewer on a tiny scene, driven by headless Chromium.

What it does, end to end:

1. generates a tiny pad-synth class (gorilla, 64 px, 3 good and 2 x 3 defective test queries);
2. trains `omnipose-ad-lite` on it briefly (`ns-train ... --max-num-iterations 300 --vis tensorboard`);
3. starts `ns-viewer --load-config .../config.yml --viewer.websocket-port <free port>`;
4. opens the viewer in headless Chromium (Selenium driving /usr/bin/chromium with --headless --no-sandbox),
   selects a query in the panel's "Query" dropdown, presses "Localise & detect", waits for the result (the
   panel's picture, score and decision), steps back from the query's pose with the mouse wheel, orbits a
   little and saves a screenshot of the whole page (depth compositing stays on: the scene's cameras show
   over the background and hide behind the object);
5. with ``--anomaly-out``, also presses "Go to estimated pose", switches the viewer's output to "anomaly" and
   saves a second screenshot.

Steps 1-2 are skipped when WORKDIR already holds a trained run. On an idle 2-core CPU: under a minute to
generate, 5-10 min to train, 2-3 min for the viewer and the browser (the pose index is built on the first click);
the timeouts are generous for a busy machine.

Requirements (not needed by the test suite, so not in the `dev` extra):

    apt-get install -y chromium chromium-driver
    pip install selenium

Usage:

    python scripts/viewer_screenshot.py --out docs/viewer_inspection.png
    python scripts/viewer_screenshot.py --workdir /tmp/pad-viewer --query "test/Missing/1.png (Missing)" \\
        --out shot.png --anomaly-out shot_anomaly.png

Exit status 0 when the result appeared and the screenshot was written; the viewer's log is in WORKDIR/viewer.log.
CI runs `tests/test_viewer.py` instead, which drives the same panel callbacks without a browser.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RESULT_TIMEOUT_S = 900
VIEWER_TIMEOUT_S = 900


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/viewer_inspection.png"), help="screenshot to write")
    parser.add_argument("--anomaly-out", type=Path, default=None, help="also a screenshot of the 'anomaly' output")
    parser.add_argument("--workdir", type=Path, default=None, help="data, run and logs (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the tiny scene")
    parser.add_argument("--query", default="test/Missing/1.png (Missing)", help="dropdown entry to inspect")
    parser.add_argument("--window", default="1500,1250", help="browser window size, width,height")
    parser.add_argument("--url", default=None, help="drive an ns-viewer already running there (skips steps 1-3)")
    args = parser.parse_args()
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            sys.exit(f"{path} not found: install it with `apt-get install -y {what}`.")
    if args.url:
        inspect_in_browser(args.url, args)
        print(f"Screenshot written to {args.out}")
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pad-viewer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = train_tiny_scene(workdir, args.steps)
    port = free_port()
    log_path = workdir / "viewer.log"
    with log_path.open("w") as log:
        viewer = subprocess.Popen(
            ["ns-viewer", "--load-config", str(config), "--viewer.websocket-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            wait_for_http(f"http://localhost:{port}", viewer, timeout=VIEWER_TIMEOUT_S)
            inspect_in_browser(f"http://localhost:{port}", args)
        finally:
            viewer.terminate()
            try:
                viewer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                viewer.kill()
    print(f"Screenshot written to {args.out}" + (f" and {args.anomaly_out}" if args.anomaly_out else ""))
    return 0


def train_tiny_scene(workdir: Path, steps: int) -> Path:
    """The config.yml of a tiny trained run in workdir, generated and trained unless already there."""
    runs = sorted((workdir / "outputs").glob("*/omnipose-ad-lite/*/config.yml"))
    if runs and any((runs[-1].parent / "nerfstudio_models").glob("step-*.ckpt")):
        print(f"Reusing {runs[-1]}")
        return runs[-1]
    from pad_nerfstudio.synth.generate import generate_dataset

    print("Generating a tiny pad-synth class...")
    class_dir = generate_dataset(
        workdir / "data", classes=["gorilla"], size=64, n_test_good=3, n_test_defect=2, progress=False
    )[0]
    print(f"Training omnipose-ad-lite for {steps} steps (minutes on a CPU)...")
    command = ["ns-train", "omnipose-ad-lite", "--data", str(class_dir), "--max-num-iterations", str(steps)]
    command += ["--vis", "tensorboard", "--output-dir", str(workdir / "outputs"), "--timestamp", "run"]
    with (workdir / "train.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return workdir / "outputs" / class_dir.name / "omnipose-ad-lite" / "run" / "config.yml"


def inspect_in_browser(url: str, args: argparse.Namespace) -> None:
    """Select the query, press "Localise & detect", wait for the result and take the screenshot(s)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.window}"):
        options.add_argument(flag)
    # WebGL without a GPU: the viewer's 3D scene is drawn by SwiftShader, Chromium's software renderer.
    for flag in ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(120)
        driver.get(url)
        lower_priority(driver.service.process.pid)
        wait_for_panel(driver, VIEWER_TIMEOUT_S)
        select_option(driver, "Query", args.query)
        click_button(driver, "Localise & detect")
        time.sleep(3)  # lets the click's websocket message go out before the page is left
        print("Localising and detecting (the first click also builds the pose index)...")
        wait_for_result(driver, url, RESULT_TIMEOUT_S)
        click_button(driver, "Go to estimated pose")  # what "Localise & detect" did while the page was away
        time.sleep(5)  # the browser camera has reached the query's estimated pose
        step_back_and_orbit(driver)
        time.sleep(30)  # the viewer re-renders at the new camera pose, first coarse, then at full resolution
        scroll_panel_to(driver, "//button[.//*[normalize-space()='Go to estimated pose']]")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        if args.anomaly_out is not None:
            click_button(driver, "Go to estimated pose")
            time.sleep(5)
            select_option(driver, "Output type", "anomaly")
            time.sleep(30)
            scroll_panel_to(driver, "//button[.//*[normalize-space()='Go to estimated pose']]")
            driver.save_screenshot(str(args.anomaly_out))
    finally:
        driver.quit()


def lower_priority(root_pid: int) -> None:
    """Renice chromedriver and every Chromium process below it to 19: Chromium raises its GPU process's priority,
    and its software WebGL would otherwise starve ns-viewer (and anything else running) of CPU."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
        except OSError:
            pass


def wait_for_result(driver, url: str, timeout: float, poll_s: float = 45.0) -> None:
    """Wait for the panel's result picture, leaving the page meanwhile.

    The viewer's page redraws its WebGL scene continuously, which in software (no GPU) takes about a CPU core
    that ns-viewer needs for the inspection; the panel's state lives on the server, so the page is closed while
    the viewer works and reopened now and then to look.
    """
    deadline = time.time() + timeout
    while True:
        driver.get("about:blank")
        time.sleep(poll_s)
        driver.get(url)
        lower_priority(driver.service.process.pid)
        wait_for_panel(driver, max(deadline - time.time(), 60.0))
        try:
            wait_for(driver, "//img[starts-with(@src, 'data:image/png')]", 10)
            return
        except TimeoutError:
            if time.time() > deadline:
                raise


def wait_for_panel(driver, timeout: float) -> None:
    """Wait for the inspection panel; ns-viewer serves the page before its GUI exists, so reload now and then."""
    deadline = time.time() + timeout
    while True:
        try:
            wait_for(driver, "//label[normalize-space()='Query']", min(120.0, max(deadline - time.time(), 1.0)))
            return
        except TimeoutError:
            if time.time() > deadline:
                raise
            driver.refresh()


def select_option(driver, label: str, option: str, timeout: float = 120) -> None:
    """Open the dropdown labelled ``label`` in the viewer's panel and choose ``option``."""
    from selenium.webdriver.common.by import By

    field_label = wait_for(driver, f"//label[normalize-space()='{label}']", timeout)
    field = driver.find_element(By.ID, field_label.get_attribute("for"))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.click()
    choice = wait_for(driver, f"//*[@role='option' and normalize-space()='{option}']", timeout)
    choice.click()
    deadline = time.time() + timeout
    while field.get_attribute("value") != option:
        if time.time() > deadline:
            raise TimeoutError(f"The dropdown '{label}' did not take the value '{option}'.")
        time.sleep(0.2)


def click_button(driver, text: str, timeout: float = 120) -> None:
    button = wait_for(driver, f"//button[.//*[normalize-space()='{text}']]", timeout)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def step_back_and_orbit(driver) -> None:
    """From the query's pose, dolly out (mouse wheel) and orbit a little (drag), to see its camera and the object."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    canvas = next(c for c in driver.find_elements(By.TAG_NAME, "canvas") if c.is_displayed())
    for _ in range(6):
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 300).perform()
        time.sleep(0.3)
    ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(-120, 15).release().perform()


def scroll_panel_to(driver, xpath: str) -> None:
    """Scroll the control panel so that the element (the panel's last one) is at the bottom of the window."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.XPATH, xpath)
    driver.execute_script("arguments[0].scrollIntoView({block: 'end'});", element)
    time.sleep(0.5)


def wait_for(driver, xpath: str, timeout: float):
    """The first displayed element matching ``xpath``, waiting for it to appear."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while True:
        shown = [element for element in driver.find_elements(By.XPATH, xpath) if element.is_displayed()]
        if shown:
            return shown[0]
        if time.time() > deadline:
            raise TimeoutError(f"Nothing matching {xpath} appeared within {timeout:.0f} s.")
        time.sleep(0.5)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ns-viewer answers (loading the checkpoint and starting viser take a while)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ns-viewer exited with status {process.returncode}; see its log.")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"ns-viewer did not answer at {url} within {timeout:.0f} s.")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
