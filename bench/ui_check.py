"""Does the MLflow UI open on the trial table? A headless-browser check of ``study ui``'s deep link.

Runs ``study ui`` on a finished study, opens the link it prints in headless Chromium (Selenium with the system's
``chromedriver``), and checks that the runs table lists the study's trial runs (their names), not its endpoint
runs, with one column per factor and the barrier columns; saves a screenshot; stops ``study ui`` with SIGTERM and
checks that no MLflow server is left listening.

Needs Chromium and its driver (Debian: ``apt-get install -y chromium chromium-driver``) and ``pip install
selenium``; not part of the test suite (CI has no browser)::

    .venv/bin/python bench/ui_check.py                       # runs a small study first (~2-3 min on 2 cores)
    .venv/bin/python bench/ui_check.py --study studies/quickstart --screenshot docs/mlflow_trials.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
SMALL_SPEC = """\
name: ui-check
description: The headless-browser check of the MLflow UI (bench/ui_check.py) - MLP and TinyTen on digits,
  no alignment vs weight matching, clean vs PGD-trained endpoints.
trial:
  data: {name: digits}
  model: {width: 0.125}
  train: {epochs: 2, batch_size: 128, augment: false}
  curve: {kind: bezier, bends: 3, train: {epochs: 2, batch_size: 128, augment: false}}
  eval: {points: 5}
  device: cpu
factors:
  seeds: [[0, 1]]
  model.arch: [mlp, tinyten]
  align.method: [none, weight]
  train.attack.eps: [0.0, 0.03]
resources: {cpu: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_small_study(out: Path) -> Path:
    spec = out / "ui-check.yaml"
    spec.write_text(SMALL_SPEC)
    done = subprocess.run([*STUDY, "run", str(spec), "--out", str(out), "--quiet"], cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the small study failed (exit {done.returncode})")
    return out / "ui-check"


def wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"study ui exited with {proc.returncode} before the server was up")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                if reply.read().strip() == b"OK":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the MLflow server at {base} was not healthy after {timeout_s:.0f} s")


def close_assistant(driver) -> None:
    """MLflow 3.17 opens an "MLflow Assistant" side panel on a first visit; close it to show the table."""
    for button in driver.find_elements("xpath", "//*[contains(text(), 'MLflow Assistant')]/ancestor::div[2]//button"):
        label = (button.get_attribute("aria-label") or "").lower()
        if "close" in label:
            button.click()
            return
    print("note: found no close button of the MLflow Assistant panel")


def browse(url: str, screenshot: Path, expect_names: list[str], endpoint_names: list[str],
           factors: list[str], metric: str, timeout_s: float = 60) -> list[str]:
    """Open ``url``; return the problems seen (empty: the table is as it should be)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1920,1000"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    problems: list[str] = []
    try:
        driver.get(url)
        deadline, text = time.time() + timeout_s, ""
        while time.time() < deadline:  # the UI is a single-page app: wait for the runs to be drawn
            text = driver.find_element("tag name", "body").text
            if all(name in text for name in expect_names[:3]) and factors[0] in text:
                break
            time.sleep(1)
        close_assistant(driver)
        time.sleep(2)  # let the grid finish laying out its columns
        text = driver.find_element("tag name", "body").text
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        headers = [h.text for h in driver.find_elements("css selector", ".ag-header-cell-text, [role=columnheader]")]
        shown = [n for n in expect_names if n in text]
        print(f"page: {driver.current_url}")
        print(f"header cells: {[h for h in headers if h][:30]}")
        print(f"trial run names visible: {len(shown)} of {len(expect_names)}")
        if "overview" in driver.current_url.split("#")[-1].split("?")[0]:
            problems.append("the link landed on the GenAI overview, not the runs table")
        if not shown:
            problems.append("no trial run name is visible in the runs table")
        if any(n in text for n in endpoint_names):
            problems.append("endpoint runs are listed in the trial table")
        header_text = " ".join(headers) + " " + text
        for factor in factors:
            if factor not in header_text:
                problems.append(f"no column for factor {factor!r}")
        if metric not in header_text:
            problems.append(f"no column for metric {metric!r}")
    finally:
        driver.quit()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=None, help="a finished study folder (default: run a small one)")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "mlflow_trials.png")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ui-check-"))
    study_dir = args.study or run_small_study(scratch)
    sys.path.insert(0, str(ROOT))
    from study.sweep import naming
    from study.sweep.spec import load
    from study.tracking.tracker import flatten_params

    spec = load(study_dir / "spec.yaml")
    trial_names = list(naming.trial_names(spec.trials).values())
    endpoint_names = list(naming.endpoint_names(spec.trials, spec.endpoints()).values())
    factors = list(dict.fromkeys(k for t in spec.trials for k in flatten_params(t.factors)))

    port = args.port or free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ui = subprocess.Popen([*STUDY, "ui", str(study_dir), "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    url = None
    try:
        for line in ui.stdout:  # type: ignore[union-attr]
            print(f"study ui: {line.rstrip()}")
            match = re.search(r"trial runs: (\S+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise SystemExit("study ui printed no link to the trial runs")
        wait_healthy(f"http://127.0.0.1:{port}", ui)
        again = subprocess.run([*STUDY, "ui", str(study_dir), "--port", str(port)], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        print(f"second `study ui` on the same port: exit {again.returncode}: {again.stderr.strip()}")
        problems = browse(url, args.screenshot, trial_names, endpoint_names, factors,
                          "barrier_chord/linear/test_loss")
        if again.returncode == 0:
            problems.append("a second `study ui` on a busy port exited 0")
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
    time.sleep(1)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            problems.append(f"after SIGTERM to `study ui`, something still listens on port {port}")
    print(f"screenshot: {args.screenshot}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("ok: the deep link opens the trial table with factor and barrier columns" if not problems else
          f"{len(problems)} problem(s)")
    if args.study is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
