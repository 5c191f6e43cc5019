"""Tests of hareid, grouped like the package (src/hareid); shared setup in conftest.py."""
