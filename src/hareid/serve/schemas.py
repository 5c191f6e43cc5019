"""The JSON shapes of the ``hareid serve`` API (pydantic models; OpenAPI at ``/docs``)."""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["AddOut", "EmbedOut", "Facets", "GroupOut", "Health", "ItemOut", "Match", "Page", "Query",
           "SearchOut", "Seen"]


class ItemOut(BaseModel):
    id: int
    name: str
    path: str = Field(description="relative to the gallery folder")
    camera: str
    time: float | None
    source: str
    pid: int
    tracklet: str = Field("", description="global tracklet key; '' for a plain image")
    frame: int = Field(-1, description="0-based frame in its source footage; -1: none")
    box: list[float] | None = Field(None, description="x1, y1, x2, y2 in frame pixels")
    image_url: str
    attention_url: str
    footage_url: str | None = Field(None, description="the frame with the box (JPEG), when the "
                                                      "server may read its footage")


class Match(ItemOut):
    rank: int = Field(description="1-based rank over all pages")
    score: float = Field(description="cosine similarity of the unit embeddings")
    distance: float = Field(description="squared euclidean distance = 2 - 2 * score")


class Seen(BaseModel):
    """One crop of a group that matched."""

    id: int
    camera: str
    time: float | None
    frame: int
    score: float


class GroupOut(BaseModel):
    """One person (tracklet) in grouped results (``group=tracklet``)."""

    rank: int = Field(description="1-based rank of the group over all pages")
    tracklet: str = Field(description="'' for a plain image (a group of one)")
    best_id: int = Field(description="its best crop: the match in `results` at this rank")
    camera: str
    score: float
    count: int = Field(description="its crops among the top `depth` crops of the query")
    time_min: float | None
    time_max: float | None
    seen: list[Seen] = Field(description="those crops, best first")


class Query(BaseModel):
    kind: Literal["image", "embedding", "gallery"]
    gallery_id: int | None = None
    name: str | None = None


class SearchOut(BaseModel):
    query: Query
    k: int
    offset: int
    has_more: bool = Field(description="a next page may hold more matches")
    results: list[Match]
    group: Literal["none", "tracklet"] = "none"
    groups: list[GroupOut] | None = Field(None, description="with group=tracklet: one per result, "
                                                            "same order")
    depth: int | None = Field(None, description="crops searched to form the groups")
    query_attention: str | None = Field(None, description="PNG data URL (with attention=true)")
    took_ms: float


class EmbedOut(BaseModel):
    dim: int
    embedding: list[float] = Field(description="unit-length embedding")
    took_ms: float


class AddOut(BaseModel):
    ids: list[int]
    items: list[ItemOut]
    count: int = Field(description="gallery size after the add")


class Page(BaseModel):
    items: list[ItemOut]
    offset: int
    limit: int
    count: int


class Facets(BaseModel):
    cameras: list[str]
    sources: list[str]
    time_min: float | None
    time_max: float | None
    count: int
    tracklets: int = Field(0, description="distinct tracklets in the gallery")


class Health(BaseModel):
    status: str
    backend: str
    kind: str
    dim: int
    count: int
    batching: dict[str, dict[str, float]]
