"""Which gallery entries are junk for a query when there is only one camera.

The Market-1501 rule drops gallery entries with the query's identity *and* camera. With one camera
that drops every match ("no query has a correct match"). The rules here only rewrite the camera
slot of the records, so the one metric function (:func:`hareid.evaluate.evaluate_rank`, and
anything built on it) applies unchanged:

* ``camera`` - the Market-1501 rule as it is (several cameras);
* ``tracklet`` - the query's own tracklet is junk, other tracklets of the same person are matches:
  the camera slot holds the tracklet (a CSV ``tracklet`` column, or folder file names
  ``<camera>_<tracklet>_<anything>.jpg``); neighbouring frames of one track, near-copies of the
  query, then never count;
* ``none`` - only the query's own image file is junk (the camera slot holds the file);
  optimistic when gallery images are near-copies of queries;
* ``auto`` - ``camera`` when query and gallery span two or more cameras, else ``tracklet`` when
  tracklets are known, else a :class:`~hareid.errors.DataError` that names the options.

For footage without labels, the ``tracklets`` layout builds its query/gallery split with the
junk groups already in the camera slot (:mod:`hareid.data.tracklets`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from hareid.data.records import ImageRecord, ReIDDataset, index_labels
from hareid.errors import DataError

__all__ = ["JUNK_RULES", "apply_junk_rule", "resolve_junk_rule"]

JUNK_RULES = ("auto", "camera", "tracklet", "none")


def resolve_junk_rule(ds: ReIDDataset, rule: str = "auto") -> str:
    """The concrete rule ``auto`` stands for on ``ds`` (others are returned as they are)."""
    if rule not in JUNK_RULES:
        raise DataError(f"unknown junk rule {rule!r}; choose {', '.join(JUNK_RULES)}")
    one_camera = len({r.camid for r in ds.query + ds.gallery}) < 2
    if rule in ("tracklet", "none") or (rule == "camera" and not one_camera):
        return rule
    groups = ds.extras.get("tracklet") or {}
    if rule == "auto":
        if not one_camera:
            return "camera"
        if groups and all(r.path in groups for r in ds.query + ds.gallery):
            return "tracklet"
    raise DataError(f"{ds.root}: query and gallery come from one camera, so the Market-1501 rule (same "
                    "identity + same camera = junk) leaves no match; give tracklets (CSV column "
                    "'tracklet', or file names <camera>_<tracklet>_<name>.jpg) and use --junk tracklet, "
                    "or --junk none (only the query's own file is junk)")


def apply_junk_rule(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], rule: str,
                    groups: Mapping[str, object] | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Query and gallery records with the camera slot rewritten for ``rule`` (not ``auto``)."""
    query, gallery = list(query), list(gallery)
    if rule == "camera":
        return query, gallery
    if rule == "none":
        ids = index_labels(r.path for r in query + gallery)
    elif rule == "tracklet":
        groups = groups or {}
        missing = [r.path for r in query + gallery if r.path not in groups]
        if missing:
            raise DataError(f"{missing[0]}: no tracklet known for this image ({len(missing)} without); "
                            "add a CSV column 'tracklet' or name files <camera>_<tracklet>_<name>.jpg")
        ids = index_labels(str(groups[r.path]) for r in query + gallery)
        return ([replace(r, camid=ids[str(groups[r.path])]) for r in query],
                [replace(r, camid=ids[str(groups[r.path])]) for r in gallery])
    else:
        raise DataError(f"unknown junk rule {rule!r}; choose camera, tracklet or none")
    return [replace(r, camid=ids[r.path]) for r in query], [replace(r, camid=ids[r.path]) for r in gallery]
