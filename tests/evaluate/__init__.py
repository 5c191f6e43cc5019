"""Tests of hareid.evaluate: features, metrics, re-ranking, streaming, junk rules."""
