"""The console's web UI in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``; ``make browser`` installs them) driven by Selenium, against a real local swarm
(SN, 3 SL nodes, 3 ML processes of the digits example, one of them poisoned) and its real console.

The browser trusts exactly the console's key (``--ignore-certificate-errors-spki-list``, honoured only
with a ``--user-data-dir``); the test checks separately that the served certificate chains to the run's
CA. Chromium and chromedriver run in their own process group, killed in teardown, also on failure.

Screenshots of both pages go to the test's tmp dir; with ``SWARM_CONSOLE_SCREENSHOTS=DIR`` they are also
copied to ``DIR/console-swarm.png`` and ``DIR/console-task.png`` (``docs/`` holds the committed ones).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from swarmlearning import pki
from swarmlearning.local.console import LocalConsole, start_console
from swarmlearning.local.runner import LocalSwarm, tail

from tests.integration.test_swarm import DIGITS, POISON, small_config

pytestmark = pytest.mark.integration

EPOCHS = 15
"""Long enough (about 55 rounds, 10-25 s on two cores) for the browser to watch rounds commit."""
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- browser


def _chromium_paths() -> tuple[str, str]:
    """The Chromium binary (the real one, not Debian's wrapper script, when present) and chromedriver."""
    chromium = "/usr/lib/chromium/chromium" if os.access("/usr/lib/chromium/chromium", os.X_OK) else None
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the console's browser test needs Chromium and its driver "
            f"(found chromium={chromium}, chromedriver={driver}): `make browser` installs them "
            "(apt-get install chromium chromium-driver)"
        )
    return chromium, driver


def spki_pin(cert_pem: bytes) -> str:
    """base64 sha256 of the certificate's SubjectPublicKeyInfo: what Chromium's SPKI list takes."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _processes_with(marker: str, group: int | None) -> list[tuple[int, str]]:
    """(pid, state) of processes in process group ``group`` or whose command line contains ``marker``
    (this test's own Chromium profile folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # /proc/PID/stat: "pid (comm) state ppid pgrp …"; comm may hold spaces, so split after ")".
            state, _ppid, pgrp = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == group or marker.encode() in (proc / "cmdline").read_bytes():
                found.append((int(proc.name), state))
    return found


@contextlib.contextmanager
def chromium(profile: Path, pin: str, log_path: Path) -> Iterator[Any]:
    """A headless Chromium trusting the key ``pin``; everything it started is gone after the block."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(
            f"the console's browser test needs selenium (the dev extra: pip install -e '.[dev]'): {e}"
        )
    binary, driver_path = _chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={pin}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Its own session: chromedriver leads a process group that Chromium's processes join.
    service = Service(driver_path, log_output=str(log_path), popen_kw={"start_new_session": True})
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        group = service.process.pid if getattr(service, "process", None) else None
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=10)
        # Anything that left the group still names the profile folder on its command line. Killed
        # children of chromedriver are zombies until init reaps them: waited for, not counted.
        deadline = time.monotonic() + 10
        while (left := _processes_with(str(profile), group)) and time.monotonic() < deadline:
            for pid, state in left:
                if state != "Z":
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        alive = [pid for pid, state in left if state != "Z"]
        assert not alive, f"Chromium processes {alive} outlived the test"


# ------------------------------------------------------------------------------------------- helpers


def sel(name: str, **attrs: str) -> str:
    return f'[data-testid="{name}"]' + "".join(f'[data-{k}="{v}"]' for k, v in attrs.items())


def page_state(driver: Any) -> str:
    """What the page shows about failures, and the browser's console: for failure messages."""
    try:
        banner = driver.execute_script(
            "const b = document.querySelector('[data-testid=status-banner]'); return b ? b.innerText : '';"
        )
        stream = driver.execute_script(
            "const s = document.querySelector('[data-testid=stream-status]'); return s ? s.innerText : '';"
        )
        logs = "\n".join(f"    {e['level']} {e['message']}" for e in driver.get_log("browser"))
        return (
            f"page {driver.current_url}; banner: {banner!r}; stream: {stream!r}\n  browser console:\n{logs}"
        )
    except Exception as e:  # the browser itself may be the problem
        return f"(page state unavailable: {e})"


def wait_until(what: str, check: Callable[[], T | None], timeout: float, driver: Any, swarm: LocalSwarm) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s.

    An exception in ``check`` (an element replaced while it was read, a cell not yet a number) counts
    as not yet; the last one is quoted when the wait fails."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as e:
            value, last_error = None, f"last check raised {type(e).__name__}: {e}"
        if value:
            return value
        time.sleep(0.25)
    logs = "\n".join(f"--- {p.name}\n{tail(p, 6)}" for p in sorted((swarm.run_dir / "logs").glob("*.log")))
    pytest.fail(
        f"timed out after {timeout:g}s waiting for {what}; {last_error}\n{page_state(driver)}\n{logs}"
    )


# Read in one script run, so a table re-rendered meanwhile never hands back a stale element.
def texts(driver: Any, selector: str) -> list[str]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent.trim());", selector
        )
    )


def attr(driver: Any, selector: str, name: str) -> str | None:
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
        selector,
        name,
    )
    return None if value is None else str(value)


def count(driver: Any, selector: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length;", selector))


def cell(driver: Any, row: str, column: int) -> str:
    """Text of the ``column``-th cell (from 0) of the first row matching ``row``."""
    return str(
        driver.execute_script(
            "const r = document.querySelector(arguments[0]);\n"
            "return r ? r.cells[arguments[1]].innerText : '';",
            row,
            column,
        )
    )


def click(driver: Any, selector: str) -> bool:
    """A real click on the first match; False when it was replaced before the click landed."""
    from selenium.common.exceptions import StaleElementReferenceException

    found = driver.find_elements("css selector", selector)
    if not found:
        return False
    try:
        found[0].click()
    except StaleElementReferenceException:
        return False
    return True


def screenshot(driver: Any, path: Path) -> Path:
    """The whole page, also below the window (Chrome's DevTools protocol renders beyond the viewport)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    if target := os.environ.get("SWARM_CONSOLE_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)
    return path


def api(console: LocalConsole, path: str) -> Any:
    """A call with the run's token, trusting only the run's CA (also checks the console's certificate)."""
    ctx = ssl.create_default_context(cafile=str(console.ca))
    req = urllib.request.Request(
        console.base + path.lstrip("/"), headers={"Authorization": f"Bearer {console.token}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.load(resp)


def anonymous_status(console: LocalConsole, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(console.ca))
    try:
        with urllib.request.urlopen(console.base + path, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def restart_console(swarm: LocalSwarm, console: LocalConsole, timeout: float = 60) -> LocalConsole:
    """The same console command again, on the port the pages already talk to."""
    port = console.base.rstrip("/").rsplit(":", 1)[1]
    cmd = [str(c) for c in console.proc.popen.args]  # type: ignore[union-attr]
    cmd[cmd.index("--port") + 1] = port
    proc = swarm.launch("console", cmd, swarm.run_dir / "logs" / "console-2.log", dict(os.environ))
    restarted = dataclasses.replace(console, proc=proc)
    swarm.local_console = restarted  # stopped by swarm.close()
    deadline = time.monotonic() + timeout
    while True:
        try:
            api(restarted, "/api/v1/whoami")
            return restarted
        except OSError as e:
            if not proc.running() or time.monotonic() > deadline:
                pytest.fail(
                    f"the restarted console does not serve on {console.base}: {e}\n{tail(proc.log_path)}"
                )
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- test


def test_console_pages_follow_a_training_with_a_poisoned_site(tmp_path: Path) -> None:
    cfg = dataclasses.replace(small_config(3, train={"epochs": EPOCHS}), timeout_seconds=240)
    # node-3's training program sends NaN weights from round 2 on (tests/chaos/poison.py).
    poisoned = {"node-3": [sys.executable, str(POISON), "--kind", "nan", str(DIGITS / "train.py")]}
    shots = tmp_path / "screenshots"
    shots.mkdir()
    start, marks = time.monotonic(), []

    def mark(what: str) -> None:
        marks.append(f"{what} {time.monotonic() - start:.1f}s")

    with LocalSwarm(cfg, tmp_path / "run", ml_command=poisoned) as swarm:
        swarm.prepare()
        swarm.start_sn()
        console = swarm.local_console = start_console(swarm)
        assert api(console, "/api/v1/whoami")["rights"] == ["status", "model"]
        for page in ("", "tasks/some-task", "static/console.js"):  # nothing is served anonymously
            assert anonymous_status(console, page) == 401, page
        names = cfg.node_names()
        for name in names:
            swarm.start_sl(name)
        swarm.wait_sl_ready(names)
        cert_pem = (swarm.run_dir / "pki" / "console" / pki.NODE_CERT).read_bytes()
        with chromium(
            tmp_path / "chromium-profile", spki_pin(cert_pem), tmp_path / "chromedriver.log"
        ) as driver:
            # The printed URL signs in (cookie) and lands on the swarm page.
            mark("swarm up, browser started")
            driver.get(console.url)
            assert driver.current_url == console.base, driver.current_url
            wait_until(
                "the network's name",
                lambda: texts(driver, sel("network-name")) == ["local"],
                30,
                driver,
                swarm,
            )
            wait_until(
                "three live SL nodes in the membership table",
                lambda: count(driver, sel("node-row", live="true")) == 3,
                60,
                driver,
                swarm,
            )
            assert texts(driver, sel("sn-row"))[0].startswith("sn-1"), texts(driver, sel("sn-row"))

            # Training starts only now, so the pages see it begin (the task appears by the event stream).
            mark("swarm page shown")
            for name in names:
                swarm.start_ml(name)
            contract = wait_until(
                "the task's link on the swarm page",
                lambda: texts(driver, sel("task-link")),
                90,
                driver,
                swarm,
            )[0]
            mark("task on the swarm page")
            wait_until(
                "a click on the task's link", lambda: click(driver, sel("task-link")), 10, driver, swarm
            )
            wait_until(
                "the task page", lambda: texts(driver, sel("task-name")) == [contract], 30, driver, swarm
            )
            point = sel("loss-chart") + " " + sel("point")
            first = wait_until("points on the loss chart", lambda: count(driver, point), 60, driver, swarm)
            mark(f"{first} points")
            # No reload from here on: the curves grow from the event stream alone.
            grown = wait_until(
                f"the loss chart to gain points beyond the {first} plotted at first",
                lambda: (n := count(driver, point)) > first and n,
                60,
                driver,
                swarm,
            )
            mark(f"{grown} points")
            assert texts(driver, sel("stream-status")) == ["live"]
            assert count(driver, sel("metric-chart") + " " + sel("point")) > 0

            # The swarm page in a second tab while the training goes on, for its screenshot.
            task_tab = driver.current_window_handle
            driver.switch_to.new_window("tab")
            driver.get(console.base)
            wait_until(
                "the task row on the swarm page in a new tab",
                lambda: (
                    int(cell(driver, sel("task-row"), 2)) >= 1
                    and attr(driver, sel("ledger-audit"), "data-state")
                ),
                30,
                driver,
                swarm,
            )
            screenshot(driver, shots / "console-swarm.png")
            driver.close()
            driver.switch_to.window(task_tab)
            rejection = wait_until(
                "node-3's rejected input in the round timeline",
                lambda: texts(driver, sel("rejection", node="node-3")),
                60,
                driver,
                swarm,
            )[0]
            assert "non-finite" in rejection, rejection
            assert count(driver, sel("round-row") + ".has-rejection"), "rejections are not highlighted"
            assert "rejected" in texts(driver, sel("rejection-summary"))[0]
            wait_until(
                "the task page to show the task finished",
                lambda: attr(driver, sel("task-state"), "data-state") == "finished",
                180,
                driver,
                swarm,
            )
            mark("task finished")
            final_points = count(driver, point)
            assert final_points >= grown, (first, grown, final_points)
            assert attr(driver, sel("model-link"), "href") == f"/api/v1/tasks/{contract}/model"
            # The poisoned site never took part after round 1: it has no point on the curves.
            assert count(driver, sel("loss-chart") + " " + sel("point", node="node-3")) == 0
            screenshot(driver, shots / "console-task.png")
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"the pages logged errors: {errors}"

            # The swarm page after the run: the finished task, and the ledger's audit.
            driver.get(console.base)
            wait_until(
                "the ledger audit to show OK",
                lambda: attr(driver, sel("ledger-audit"), "data-state") == "ok",
                30,
                driver,
                swarm,
            )
            assert texts(driver, sel("ledger-audit"))[0].startswith("OK"), texts(driver, sel("ledger-audit"))
            assert api(console, "/api/v1/ledger/verify")["ok"] is True
            wait_until(
                "the task row to show the task finished",
                lambda: "finished" in texts(driver, sel("task-row"))[0],
                30,
                driver,
                swarm,
            )

            # The stream drops when the console goes away; the page says so, and recovers when it is back.
            mark("audit shown")
            console.proc.kill()  # as a crash: no goodbye on the open streams
            wait_until(
                "the page to report the dropped event stream",
                lambda: (
                    attr(driver, sel("stream-status"), "data-state") in ("reconnecting", "stopped")
                    and count(driver, sel("problem", source="stream"))
                ),
                30,
                driver,
                swarm,
            )
            mark("drop shown")
            console = restart_console(swarm, console)
            wait_until(
                "the event stream to reconnect",
                lambda: (
                    attr(driver, sel("stream-status"), "data-state") == "live"
                    and not count(driver, sel("problem"))
                ),
                45,
                driver,
                swarm,
            )

            # Signed out (the cookie is gone): the next API call's 401 is explained on the page.
            mark("reconnected")

            # Every ML process has exited well meanwhile (the poisoned one too: its input was only rejected).
            codes = swarm.wait_ml(timeout=60)
            assert codes == dict.fromkeys(names, 0), codes
            mark("ML processes exited")

            # The SN goes away: the console answers 503, and the page says the console failed.
            swarm.sn.stop()
            message = wait_until(
                "the page to explain the 503",
                lambda: texts(driver, sel("problem", status="503")),
                45,
                driver,
                swarm,
            )[0]
            assert "The console failed (503)" in message, message
            mark("503 shown")
            driver.delete_all_cookies()
            message = wait_until(
                "the page to explain the 401",
                lambda: texts(driver, sel("problem", status="401")),
                30,
                driver,
                swarm,
            )[0]
            assert "Not signed in" in message, message
            mark("401 shown")
        mark("browser gone")
    mark("all stopped")
    print(f"loss chart points: {first} at first, {grown} a moment later, {final_points} at the end")
    print("timeline: " + ", ".join(marks))
