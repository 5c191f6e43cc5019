"""Every command in README.md and the runnable ones of docs/ are run here, on tiny settings, so the
documentation cannot go stale.

Each ``hareid ...`` command of the README's ``bash`` blocks, then of the docs pages' blocks marked
``<!-- runnable -->`` (on the line above the fence; pages in the order of mkdocs.yml's nav), runs
in-process, in that order, in a temporary working folder where ``data/market1501`` is the tiny synthetic set in Market-1501 layout
and ``~/.cache/hareid/synthetic-v1`` points at the tiny set too. :func:`shrink` appends the options
that make each sub-command tiny; a command whose sub-command it does not know fails the test, so a
new README command cannot go untested. The ``pip install`` lines are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from hareid.cli import main
from tests.helpers.tiny import TRAIN_OVERRIDES, Tiny

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RUNNABLE = "<!-- runnable -->"
CACHE = "~/.cache/hareid/synthetic-v1"
VENV_PREFIX = "python3 -m venv .venv && . .venv/bin/activate && "


def blocks(lang: str) -> list[str]:
    """The README's ``lang`` blocks."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def _nav_pages(nav: list) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def doc_pages() -> list[Path]:
    """The docs pages, in the order of mkdocs.yml's nav."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [ROOT / "docs" / page for page in _nav_pages(nav)]


def runnable_blocks(lang: str) -> list[str]:
    """The README's ``lang`` blocks, then the docs pages' blocks marked runnable."""
    out = blocks(lang)
    for page in doc_pages():
        out += re.findall(rf"^{RUNNABLE}\n```{lang}\n(.*?)^```", page.read_text(), re.S | re.M)
    return out


def readme_commands() -> list[list[str]]:
    """Every ``hareid ...`` command (also inside ``a && b`` chains) of the runnable bash blocks, in order, once."""
    out: list[list[str]] = []
    for block in runnable_blocks("bash"):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for tok in [*tokens, "&&"]:
                if tok in ("&&", "||", ";"):
                    if segment and segment[0] == "hareid" and segment[1:] not in out:
                        out.append(segment[1:])
                    segment = []
                else:
                    segment.append(tok)
    return out


def shrink(argv: list[str], tiny: Tiny, work: Path) -> list[str]:
    """The tiny variant of README command ``hareid ARGV`` (run with ``work`` as the current folder)."""
    argv = [a.replace(CACHE, str(tiny.data)) for a in argv]
    command = argv[0]
    if command == "demo":
        return [*argv, "--data-root", str(tiny.data), *TRAIN_OVERRIDES]
    if command == "train":  # the README's dataset path, else the tiny set instead of the recipe's
        root = [] if any(a.startswith("data.root=") for a in argv) else [f"data.root={tiny.data}"]
        return [*argv, *root, *TRAIN_OVERRIDES]
    if command == "eval":
        return [*argv, "--workers", "0"]
    if command == "report":
        return [*argv, "--num-images", "2"]
    if command == "search":  # query images of the full synthetic set -> one of the tiny set's
        query = str(tiny.images("query")[0])
        return [query if a.endswith(".jpg") else a for a in argv]
    if command == "synthetic":
        return [*argv, "--train-ids", "4", "--test-ids", "4", "--images-per-id", "4", "--num-cams", "2",
                "--height", "64", "--width", "32", "--quiet"]  # 4 identities: one P x K batch of 4 x 2
    if command == "attention-score":
        return [*argv, "--num-images", "8"]
    if command == "ablate":
        return [*argv, "--variants", "full", "--seeds", "0", "--data-root", str(tiny.data),
                "--output", str(work / "runs" / "ablation"), *TRAIN_OVERRIDES]
    if command == "serve":  # a server blocks: --check starts it in-process, searches once, exits
        return [*argv, "--check", "--quiet"]
    if command == "tracklets":  # the README's video -> a tiny synthetic street video
        from tests.helpers.footage import make_video

        video = work / "tiny_street.avi"
        if not video.is_file():
            make_video(video)
        return [str(video) if a.endswith((".mp4", ".avi")) else a for a in argv] + ["--quiet"]
    if command == "adapt":
        return [*argv, "--quiet", "train.epochs=1", "data.batch_size=8", "data.num_instances=4",
                "data.workers=0", "train.progress=false", "adapt.holdout=0.45"]
    if command == "visualize":  # checkpoints of runs the README made elsewhere -> the tiny run's
        return [str(tiny.checkpoint) if a.endswith(".pt") and not (work / a).is_file() else a for a in argv]
    if command in ("export", "index", "datasets"):
        return argv  # already small on the tiny data
    pytest.fail(f"README command `hareid {shlex.join(argv)}`: test_readme.shrink does not know how "
                f"to run `{command}` on tiny settings; teach it")


def test_every_doc_page_is_in_the_nav() -> None:
    """mkdocs.yml's nav lists every page under docs/ (and only pages that exist)."""
    pages = doc_pages()
    assert all(p.is_file() for p in pages), [str(p) for p in pages if not p.is_file()]
    assert sorted(pages) == sorted((ROOT / "docs").glob("*.md"))


def test_readme_is_short_and_speaks_to_users() -> None:
    assert len(README.splitlines()) <= 300
    for text in [README, *(p.read_text() for p in doc_pages())]:
        assert not re.search(r"(?i)\bissue \d+|\bthe seed's\b|\bthis round\b|\bticket\b", text)


def test_readme_has_commands_for_every_section() -> None:
    commands = readme_commands()
    assert ["demo"] in commands
    used = {c[0] for c in commands}
    assert {"demo", "train", "eval", "report", "visualize", "export", "index", "search", "serve",
            "datasets", "synthetic", "attention-score", "ablate", "tracklets", "adapt"} <= used


def test_every_readme_command_is_known(tiny: Tiny, tmp_path: Path) -> None:
    for argv in readme_commands():
        shrink(argv, tiny, tmp_path)  # fails for an unknown sub-command


def test_every_readme_command_runs(tiny: Tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    work = tmp_path / "work"
    market = work / "data" / "market1501"  # the tiny set, Market-1501 layout without synthetic.json
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        shutil.copytree(tiny.data / sub, market / sub, copy_function=os.link)
    monkeypatch.chdir(work)
    ran = []
    for argv in readme_commands():
        args = shrink(argv, tiny, work)
        capsys.readouterr()
        rc = main(args)
        out, err = capsys.readouterr()
        assert rc == 0, f"README command `hareid {shlex.join(argv)}` failed:\n{err[-2000:]}"
        assert out.strip(), f"`hareid {shlex.join(argv)}` printed nothing"
        ran.append(argv[0])
    # what the README promises those commands leave behind
    for path in ("runs/demo/report/index.html", "runs/demo/checkpoints/best.onnx",
                 "runs/demo/checkpoints/best.ts", "runs/demo/index/gallery.sqlite",
                 "runs/demo/attention_score.json", "runs/market1501/report/index.html",
                 "docs/images/attention.png", "docs/images/synthetic_grid.png", "docs/images/synthetic_v2_grid.png",
                 "runs/ablation/results.jsonl", "data/street_tracklets/contact_sheet.jpg",
                 "runs/street/checkpoints/best.pt", "runs/street/adapt.json"):
        assert (work / path).is_file(), path
    assert (work / "runs/demo/gallery.db").exists()  # milvus-lite's data folder
    assert len(ran) == len(readme_commands())


def test_readme_test_command_is_what_ci_runs() -> None:
    top = [ln for ln in blocks("bash")[0].splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(top) == 2, "the README starts with exactly two commands: demo and tests"
    demo, tests = top
    assert demo.startswith(VENV_PREFIX) and demo.endswith("&& hareid demo")
    assert tests.startswith(VENV_PREFIX) and tests.endswith("pytest -n 2")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests[len(VENV_PREFIX):] in ci, ".ci/run must run the README's test command verbatim"
    assert "python3 -m venv .venv" in ci and ". .venv/bin/activate" in ci


def test_readme_python_examples_run(tiny: Tiny, capsys) -> None:
    path = "runs/demo/checkpoints/best.pt"
    codes = runnable_blocks("python")
    assert len(codes) >= 2 and all(path in code for code in codes)
    for code in codes:
        exec(compile(code.replace(path, str(tiny.checkpoint)), "README.md or docs/", "exec"), {})
    out = capsys.readouterr().out
    assert "bounding_box_test" in out and "Embedder(backend=torch" in out
