"""Tests of hareid.analysis: pictures, attention scores, the HTML report."""
