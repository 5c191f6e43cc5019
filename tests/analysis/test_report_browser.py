"""The HTML report opened in a real (headless) chromium: images load, metrics show, page renders."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hareid.analysis.report import render_report
from tests.helpers.toys import EVAL, EXPECTED, TinyAttnModel, fake_boxes, make_ranking, make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None,
                       reason="chromium not on PATH (install: apt-get install -y chromium)"),
]

# Injected into a copy of the page only: the report itself has no JavaScript.
_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const cells = {};
  document.querySelectorAll("#metrics td").forEach(td => { cells[td.dataset.key] = td.innerText; });
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({
    total: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    cells: cells,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium(profile: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    run = make_run(root)
    return render_report(
        run / "report", title=run.name, config=yaml.safe_load((run / "config.yaml").read_text()),
        eval_metrics=EVAL, metrics_jsonl=run / "metrics.jsonl", model=TinyAttnModel(),
        attention_images=torch.randn(4, 3, 64, 32), ranking=make_ranking(root / "imgs"),
        num_ranked=2, boxes_fn=fake_boxes,
    )


def test_images_load_and_metrics_show(report: Path, tmp_path: Path) -> None:
    check = report.with_name("check.html")
    check.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                   check.as_uri())
    m = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert m, f"check script did not run; DOM tail: {dom[-500:]}"
    result = json.loads(html.unescape(m.group(1)))
    assert result["total"] == 6
    assert result["loaded"] == result["total"], result
    assert result["cells"] == EXPECTED


def test_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", "--window-size=1280,4200", f"--screenshot={shot}",
             report.as_uri())
    if os.environ.get("HAREID_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["HAREID_SCREENSHOT"])
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[:2] == (4200, 1280)
    assert arr.std() > 10  # not a blank page
