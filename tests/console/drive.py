"""Drives the operator console in Debian's headless Chromium through Selenium and ChromeDriver,
for tests/it/console.rs, which starts the real server and PostgreSQL sessions and checks the
database afterwards. Each step asserts what the page shows; any failure (or any console error,
such as a Content-Security-Policy violation) exits non-zero after saving a screenshot of the
failing state and of every page under OUT_DIR.

Environment: SEVER_URL (the operator listener), SEVER_TOKEN, OUT_DIR, TARGET, and per scenario
the values below. Prints one JSON object with what the Rust side checks next.
"""

import json
import os
import subprocess
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["SEVER_URL"].rstrip("/")
TOKEN = os.environ["SEVER_TOKEN"]
OUT = os.environ["OUT_DIR"]
TARGET = os.environ["TARGET"]
WAIT = 15  # seconds: an upper bound for a step, not a measurement
PAGES = ["sessions", "actions", "audit", "locks", "policies"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new",
        "--no-sandbox",  # Chromium runs as root in CI
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1500,1000",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path, so Selenium Manager never tries to download one.
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def tid(name, within=""):
    return (By.CSS_SELECTOR, f"{within} [data-testid={name}]".strip())


class Console:
    def __init__(self, driver):
        self.d = driver
        # Pages redraw as they refresh: an element found a moment ago may be replaced.
        self.wait = WebDriverWait(driver, WAIT, poll_frequency=0.1,
                                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        self.problems = []

    def find(self, name, within=""):
        return self.wait.until(EC.visibility_of_element_located(tid(name, within)))

    def all(self, name, within=""):
        return self.d.find_elements(*tid(name, within))

    def until(self, what, condition):
        try:
            return self.wait.until(lambda _: condition())
        except Exception as e:
            raise AssertionError(f"timed out waiting for: {what}") from e

    def open(self, page):
        self.d.get(f"{URL}/console/#/{page}")

    def errors(self):
        """Console errors since the last call: a CSP violation, a script error, a 5xx. The
        refusals the scenario provokes on purpose (a wrong token's 401, a grown selection's
        409) are logged by Chromium as failed loads too, and are not errors here."""
        def expected(entry):
            return entry["source"] == "network" and any(f" status of {s} " in entry["message"] for s in (401, 409))
        return [e for e in self.d.get_log("browser") if e["level"] == "SEVERE" and not expected(e)]

    def no_alert(self):
        try:
            alert = self.d.switch_to.alert
            text = alert.text
            alert.dismiss()
            raise AssertionError(f"a script ran and opened an alert: {text!r}")
        except NoAlertPresentException:
            pass


def sign_in(c):
    c.open("sessions")
    c.find("page-sign-in")
    # A wrong token is refused, and nothing but the sign-in form is shown.
    c.find("token").send_keys("sev_wrong_token")
    c.find("sign-in").click()
    c.until("the refusal", lambda: "refused" in c.find("notice").text)
    assert not c.all("page-sessions"), "a page was shown with a refused token"
    token = c.find("token")
    token.clear()
    token.send_keys(TOKEN)
    c.find("sign-in").click()
    c.find("page-sessions")
    # The token is in session storage, never in the URL.
    assert TOKEN not in c.d.current_url
    assert c.d.execute_script("return sessionStorage.getItem('sever.operator-token')") == TOKEN
    assert c.d.execute_script("return document.cookie") == ""


def filter_login(c, login, expect_rows):
    c.until("the target list", lambda: c.find("filter-target").get_attribute("value") == TARGET)
    field = c.find("filter-login")
    field.clear()
    field.send_keys(login)
    c.find("apply-filters").click()
    c.until(f"{expect_rows} sessions of {login}", lambda: len(c.all("session-row")) == expect_rows
            and all(r.get_attribute("data-login") == login for r in c.all("session-row")))


def preview(c, expect):
    c.find("preview").click()
    c.until(f"a preview of {expect}", lambda: c.find("preview-count").text.startswith(f"{expect} session(s)"))


def press_confirm(c):
    c.find("confirm", "[data-testid=confirm-dialog]").click()


def confirm(c, expect):
    dialog = c.find("confirm-dialog")
    assert f"End {expect} session(s)" in dialog.text, dialog.text
    press_confirm(c)


def scenario_revoke(c):
    """XSS application name shown as text; a grown selection refused; then the ticked
    sessions revoked, the action followed to completion, its audit records read, and the
    trail verified."""
    sign_in(c)
    payload = os.environ["XSS_APP_NAME"]
    xss_login = os.environ["XSS_LOGIN"]
    filter_login(c, xss_login, 1)
    cell = c.find("session-application")
    assert cell.text == payload, f"application name shown as {cell.text!r}"
    assert not c.all("session-list") or not c.d.find_elements(By.CSS_SELECTOR, "[data-testid=session-list] img")
    c.no_alert()
    # Characters that hide or reorder text (a bidi override, a NUL) are shown as escapes; a
    # 4-byte character is kept as it is.
    shown = c.d.execute_async_script(
        "const done = arguments[0];"
        r"import('/console/assets/dom.js').then((m) => done(m.text('pay\u202egnp.exe\u0000 \u{1F600}')));")
    assert shown == "pay\\u202egnp.exe\\u0000 \U0001F600", repr(shown)

    # The whole filter of a login, previewed; a session opened before the revocation grows
    # the selection, and sever refuses it (409): nothing is ended.
    grow_login = os.environ["GROW_LOGIN"]
    filter_login(c, grow_login, int(os.environ["GROW_SESSIONS"]))
    preview(c, int(os.environ["GROW_SESSIONS"]))
    grower = subprocess.Popen(["psql", os.environ["GROW_DSN"], "-qAt", "-c", "SELECT pg_sleep(60)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c.until("the new session listed", lambda: len(c.all("session-row")) == int(os.environ["GROW_SESSIONS"]) + 1)
        c.find("reason").send_keys("console test: grown selection")
        c.find("revoke").click()
        confirm(c, int(os.environ["GROW_SESSIONS"]))
        c.until("the refusal of the grown selection", lambda: "grew" in c.find("revoke-error").text)
        grown_error = c.find("revoke-error").text
    finally:
        grower.terminate()
        grower.wait()
    c.find("reason").clear()

    # Tick single sessions, preview, revoke with a reason after confirming the count.
    login = os.environ["REVOKE_LOGIN"]
    pids = os.environ["REVOKE_PIDS"].split(",")
    filter_login(c, login, int(os.environ["REVOKE_LOGIN_SESSIONS"]))
    for row in c.all("session-row"):
        if row.get_attribute("data-pid") in pids:
            row.find_element(*tid("select-session")).click()
    c.until("the ticked count", lambda: c.find("selection").text.startswith(f"{len(pids)} ticked"))
    preview(c, len(pids))
    # Exactly the ticked sessions would be ended; every other one is spared with its rule.
    report = "[data-testid=preview-report] [data-testid=decisions]"
    ending = {(r.get_attribute("data-pid"), r.get_attribute("data-decision")) for r in c.all("decision-row", report)}
    assert ending == {(p, "would_terminate") for p in pids}, ending
    spared = c.d.find_elements(By.CSS_SELECTOR, "[data-testid=preview-report] [data-testid=spared-decisions] [data-testid=decision-row]")
    assert spared and all(r.get_attribute("data-pid") not in pids for r in spared)
    # No reason, no revocation.
    c.find("revoke").click()
    c.find("reason-required")
    c.find("reason").send_keys("console test: revoke ticked sessions")
    c.find("revoke").click()
    confirm(c, len(pids))
    c.find("page-actions-detail")
    c.until("the action to complete", lambda: c.find("action-status").text == "completed")
    action_id = c.d.current_url.rsplit("/", 1)[-1]
    c.until("the report", lambda: c.all("decisions"))
    terminated = {r.get_attribute("data-pid") for r in c.all("decision-row", "[data-testid=decisions]")
                  if r.get_attribute("data-decision") == "terminated"}
    assert terminated == set(pids), f"terminated rows: {terminated}"

    # Its audit records, without leaving the browser.
    c.find("action-audit").click()
    c.find("page-audit")
    c.until("the session records", lambda: len([r for r in c.all("audit-row")
                                                if r.get_attribute("data-kind") == "session.terminated"]) == len(pids))
    c.find("verify").click()
    c.until("the verdict", lambda: c.find("verify-status").get_attribute("data-status") not in (None, "running"))
    verdict = c.find("verify-status").get_attribute("data-status")
    assert verdict == "ok", f"verify said {verdict}: {c.find('verify-verdict').text}"

    # Call off an action scheduled for later, with a reason.
    c.open(f"actions/{os.environ['SCHEDULED_ACTION']}")
    c.until("the scheduled action", lambda: c.find("action-status").text == "scheduled")
    c.find("cancel-reason").send_keys("console test: called off")
    c.find("cancel-action").click()
    press_confirm(c)
    c.until("the action cancelled", lambda: c.find("action-status").text == "cancelled")

    # Keep a login out for a while, then lift the lock early, both with a reason.
    lock_login = os.environ["LOCK_LOGIN"]
    c.open("locks")
    c.find("page-locks")
    c.find("lock-login").send_keys(lock_login)
    targets = c.find("lock-targets")
    targets.clear()
    targets.send_keys(TARGET)
    c.find("lock-terminate").click()  # lock only: its session stays
    c.find("lock-reason").send_keys("console test: lock")
    c.find("lock").click()
    press_confirm(c)
    c.until("the lock listed", lambda: [r for r in c.all("lock-row") if lock_login in r.text])
    c.find("lift-lock").click()
    c.find("dialog-reason").send_keys("console test: lift")
    press_confirm(c)
    c.until("the lock lifted", lambda: not c.all("lock-row") and c.all("lock-list"))

    # Keep a database clear for a while, then lift the drain early.
    drain_db = os.environ["DRAIN_DATABASE"]
    c.find("drain-target").send_keys(TARGET)
    c.find("drain-database").send_keys(drain_db)
    c.find("drain-reason").send_keys("console test: drain")
    c.find("drain").click()
    press_confirm(c)
    c.until("the drain listed", lambda: [r for r in c.all("drain-row") if drain_db in r.text])
    c.find("lift-drain").click()
    c.find("dialog-reason").send_keys("console test: reopen")
    press_confirm(c)
    c.until("the drain lifted", lambda: not c.all("drain-row") and c.all("drain-list"))

    # Every page renders for this operator without a console error.
    for page in PAGES:
        c.open(page)
        c.find(f"page-{page}")
        time.sleep(0.3)  # let the first fetch land
    return {"action_id": action_id, "grown_error": grown_error}


def main():
    os.makedirs(OUT, exist_ok=True)
    scenario = sys.argv[1]
    driver = browser()
    c = Console(driver)
    try:
        result = globals()[f"scenario_{scenario}"](c)
        c.no_alert()
        errors = c.errors()
        assert not errors, f"console errors: {errors}"
        print(json.dumps(result))
    except BaseException:
        shoot(c, scenario)
        raise
    finally:
        driver.quit()


def shoot(c, scenario):
    """Screenshots of the failing state and of every page, for whoever reads the failure."""
    try:
        c.no_alert()
    except AssertionError:
        pass
    try:
        c.d.save_screenshot(os.path.join(OUT, f"{scenario}-failure.png"))
        print(f"browser log: {c.d.get_log('browser')}", file=sys.stderr)
        for page in PAGES:
            c.open(page)
            time.sleep(0.5)
            c.d.save_screenshot(os.path.join(OUT, f"{scenario}-page-{page}.png"))
        print(f"screenshots in {OUT}", file=sys.stderr)
    except Exception as e:  # the failure being reported matters more
        print(f"could not take screenshots: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
