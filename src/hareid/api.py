"""The Python API for people who embed hareid.

```python
from hareid.api import build_index_from_images, embed, load_model

model, info = load_model("runs/demo/checkpoints/best.pt")    # hareid or torchreid HACNN checkpoint
emb = embed(model, ["a.jpg", "b.jpg"], info)                  # (2, 1024) float32, L2-normalised per branch
index = build_index_from_images(model, gallery_paths, info)  # FAISS, exact inner product (cosine)
hits = index.search(emb, k=5)                                # per query: paths, scores, pids, camids
```

For trackers and services, :class:`hareid.Embedder` (crops or frame + boxes in, unit rows out) is
the simpler entry point; :func:`embed` here is the same forward with the evaluation's raw features.
"""

from hareid.data.loader import load_images
from hareid.data.registry import list_images
from hareid.deploy.embedder import embed
from hareid.evaluate.checkpoint import evaluate_checkpoint
from hareid.index.gallery import build_gallery_index, build_index_from_images, search_images
from hareid.models.loading import load_model

__all__ = [
    "build_gallery_index",
    "build_index_from_images",
    "embed",
    "evaluate_checkpoint",
    "list_images",
    "load_images",
    "load_model",
    "search_images",
]
