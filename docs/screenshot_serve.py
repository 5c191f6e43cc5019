"""Make the README's pictures of the `hareid serve` page (headless chromium via selenium).

    python docs/screenshot_serve.py CKPT GALLERY QUERY [--out docs/images/serve.png]

GALLERY: an index (`hareid index` output) or a folder of images / a dataset (indexed first).
Writes OUT (the ranked matches with their attention strips) and OUT with ``_match`` (a match
opened: query and match attention side by side).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.helpers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("gallery")
    ap.add_argument("query")
    ap.add_argument("--out", default="docs/images/serve.png")
    ap.add_argument("--k", default="12")
    ap.add_argument("--open", type=int, default=1, help="which match to open (0-based)")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from hareid.serve import build_app
    from tests.helpers.serve import LiveServer

    server = LiveServer(build_app(args.checkpoint, args.gallery, progress=False))
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
              f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                         options=opts)
    try:
        d.get(server.url + "/")
        body = d.find_element("tag name", "body")
        WebDriverWait(d, 60).until(lambda _: body.get_attribute("data-state") == "idle")
        Select(d.find_element("id", "k")).select_by_visible_text(args.k)
        d.find_element("id", "file").send_keys(str(Path(args.query).resolve()))
        WebDriverWait(d, 60).until(lambda _: int(body.get_attribute("data-renders")) >= 1
                                   and body.get_attribute("data-state") == "idle")
        WebDriverWait(d, 60).until(lambda _: d.execute_script(
            "return [...document.images].every(i => !i.src || (i.complete && i.naturalWidth > 0))"))
        time.sleep(0.5)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(out))
        d.find_elements("css selector", "#results .card")[args.open].click()
        WebDriverWait(d, 60).until(lambda _: d.execute_script(
            "return [...document.querySelectorAll('#detail img')].every(i => i.complete && i.naturalWidth > 0)"))
        time.sleep(0.5)
        d.save_screenshot(str(out.with_name(out.stem + "_match" + out.suffix)))
        print(f"wrote {out} and {out.with_name(out.stem + '_match' + out.suffix)}")
    finally:
        d.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
