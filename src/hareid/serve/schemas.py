"""The JSON shapes of the ``hareid serve`` API (pydantic models; OpenAPI at ``/docs``)."""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["AddOut", "EmbedOut", "Facets", "Health", "ItemOut", "Match", "Page", "Query", "SearchOut"]


class ItemOut(BaseModel):
    id: int
    name: str
    path: str = Field(description="relative to the gallery folder")
    camera: str
    time: float | None
    source: str
    pid: int
    image_url: str
    attention_url: str


class Match(ItemOut):
    rank: int = Field(description="1-based rank over all pages")
    score: float = Field(description="cosine similarity of the unit embeddings")
    distance: float = Field(description="squared euclidean distance = 2 - 2 * score")


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


class Health(BaseModel):
    status: str
    backend: str
    kind: str
    dim: int
    count: int
    batching: dict[str, dict[str, float]]
