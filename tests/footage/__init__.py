"""Tests of hareid.footage: readers, tracking, the label-free protocol, adaptation, linking."""
