"""Shared test helpers: the tiny set and run, toy models and data, synthetic footage, servers, peers."""
