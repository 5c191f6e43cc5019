"""Tests of hareid.serve: the JSON API, the page in a browser, people and footage views."""
