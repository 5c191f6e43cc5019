"""Tests of hareid.models: layers, the registered networks, inference forms, weights."""
