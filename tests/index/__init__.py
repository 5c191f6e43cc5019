"""Tests of hareid.index: FAISS and Milvus backends, the sharded build, footage fields."""
