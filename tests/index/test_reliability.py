"""Issue 11, the index / search cases: corrupt index files, `--ivf` misuse, bad images for
`hareid index` / `hareid search`, and bounded decoding of search queries.

``hareid.index`` is being rewritten as a package (FAISS + SQLite and Milvus backends); these tests
describe the behaviour the rewrite must have and run once ``hareid.index`` is that package:

* every file of a saved index, corrupted in turn: `hareid search` answers as before (a file it does
  not need) or exits 2 with one line naming the index and no traceback - never a raw
  faiss/SQLite/JSON error, never different results without a word;
* `hareid index --ivf -1` exits 2 with one line naming the option; more lists than images does not
  crash; `--batch-size 0` / `--workers -1` are refused by the argument parser (one line, exit 2);
* an unreadable gallery image does not abort `hareid index` without a word: it is skipped and named
  (with `--skip-bad-images` where the command has that option); `hareid search --skip-bad-images`
  answers the good queries and names the bad one; without the option a bad query is one line, exit 2;
* a query PNG declaring 16000x16000 pixels is refused from its header, before decoding.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from tests.helpers.reliability import _png_header_only, cli, error_line, truncate
from tests.helpers.tiny import Tiny, get_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    pytest.importorskip("faiss")
    return get_tiny(tmp_path_factory)


def _has_option(command: str, option: str) -> bool:
    from hareid.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return any(option in a.option_strings for a in sub.choices[command]._actions)


def _index(capsys: pytest.CaptureFixture, tiny: Tiny, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "index", tiny.checkpoint, data, "--out", out, "--workers", "0", *extra)


def _hits(out: str) -> list[str]:
    return [ln.split()[-1] for ln in out.splitlines() if ln.startswith("  ")]


def test_corrupt_index_files_give_one_line(tiny: Tiny, tmp_path: Path, capsys) -> None:
    good = tmp_path / "index"
    rc, _, err = _index(capsys, tiny, tiny.data, good)
    assert rc == 0, err
    query = tiny.images("query")[0]
    rc, out, err = cli(capsys, "search", tiny.checkpoint, good, query, "-k", "3")
    assert rc == 0, err
    expected = _hits(out)
    files = sorted(p.relative_to(good) for p in good.rglob("*") if p.is_file())
    assert files, "the index folder holds no files"
    for rel in files:
        broken = tmp_path / f"broken_{rel.as_posix().replace('/', '_')}"
        shutil.copytree(good, broken)
        target = broken / rel
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] + b"\x00garbage" if data else b"garbage")
        rc, out, err = cli(capsys, "search", tiny.checkpoint, broken, query, "-k", "3")
        if rc == 0:
            assert _hits(out) == expected, f"corrupt {rel}: different results without a word"
        else:
            line = error_line(err)
            assert rc == 2 and str(broken) in line, f"corrupt {rel}: {line}"
            assert target.name in line, f"corrupt {rel}: the line does not name the file: {line}"


def test_a_damaged_milvus_lite_file_is_one_line_naming_it(tiny: Tiny, tmp_path: Path, capsys) -> None:
    pytest.importorskip("pymilvus")
    bad = tmp_path / "gallery.db"
    bad.write_bytes(b"not a milvus-lite file")
    rc, _, err = cli(capsys, "search", tiny.checkpoint, bad, tiny.images("query")[0], "-k", "3")
    line = error_line(err)
    assert rc == 2 and str(bad) in line and "rebuild it with `hareid index`" in line, line
    assert bad.read_bytes() == b"not a milvus-lite file"  # nothing written over it


def test_ivf_misuse_is_one_line(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, _, err = _index(capsys, tiny, tiny.data, tmp_path / "neg", "--ivf", "-1")
    line = error_line(err)
    assert rc == 2 and ("--ivf" in line or "nlist" in line)
    rc, _, err = _index(capsys, tiny, tiny.data, tmp_path / "many", "--ivf", "100000")  # > images
    if rc != 0:
        line = error_line(err)
        assert rc == 2 and ("--ivf" in line or "nlist" in line)
    else:
        rc, out, err = cli(capsys, "search", tiny.checkpoint, tmp_path / "many", tiny.images("query")[0])
        assert rc == 0 and _hits(out), err


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--batch-size", "0", "must be >= 1"), ("--workers", "-1", "must be >= 0")])
def test_index_refuses_a_zero_batch_and_negative_workers(option: str, value: str, expected: str, tiny: Tiny,
                                                         tmp_path: Path, capsys) -> None:
    rc, _, err = cli(capsys, "index", tiny.checkpoint, tiny.data, "--out", tmp_path / "index", option, value)
    line = error_line(err)
    assert rc == 2 and option in line and expected in line
    assert not (tmp_path / "index").exists()


def test_bad_images_in_index_and_search(tiny: Tiny, tmp_path: Path, capsys) -> None:
    data = Path(shutil.copytree(tiny.data, tmp_path / "data"))
    bad = truncate(sorted((data / "bounding_box_test").glob("*.jpg"))[3])
    flag = ["--skip-bad-images"] if _has_option("index", "--skip-bad-images") else []
    with pytest.warns(RuntimeWarning) if flag else contextlib.nullcontext():
        rc, out, err = _index(capsys, tiny, data, tmp_path / "index", *flag)
    assert rc == 0, err
    assert bad.name in out + err  # skipped, and said
    query, broken = tiny.images("query")[0], truncate(Path(shutil.copy(tiny.images("query")[1], tmp_path / "q.jpg")))
    rc, _, err = cli(capsys, "search", tiny.checkpoint, tmp_path / "index", query, broken)
    assert rc == 2 and f"{broken}: unreadable image" in error_line(err)
    with pytest.warns(RuntimeWarning, match=str(broken)):
        rc, out, err = cli(capsys, "search", tiny.checkpoint, tmp_path / "index", query, broken,
                           "--skip-bad-images")
    assert rc == 0, err
    assert str(query) in out and _hits(out)


def test_search_refuses_a_decompression_bomb(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, _, err = _index(capsys, tiny, tiny.data, tmp_path / "index")
    assert rc == 0, err
    bomb = _png_header_only(tmp_path / "bomb.png", 16000, 16000)
    rc, _, err = cli(capsys, "search", tiny.checkpoint, tmp_path / "index", bomb)
    line = error_line(err)
    assert rc == 2 and f"{bomb}: declares more than" in line


def test_a_csv_time_that_is_not_finite_is_one_line_naming_the_row(tiny: Tiny, tmp_path: Path, capsys) -> None:
    gallery = sorted((tiny.data / "bounding_box_test").glob("*.jpg"))[:3]
    meta = tmp_path / "meta.csv"
    meta.write_text("path,camera,time\n" + "".join(f"{p},{i},{t}\n" for i, (p, t) in enumerate(zip(gallery, ["1", "inf", "3"]))))
    rc, _, err = cli(capsys, "index", tiny.checkpoint, tmp_path, "--meta", meta, "--out", tmp_path / "index")
    line = error_line(err)
    assert rc == 2 and f"{meta}:3" in line and "not finite" in line
    assert not (tmp_path / "index").exists()
