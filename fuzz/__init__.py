"""Fuzz targets for every reader of untrusted bytes (issue 11): see targets.py and run.py."""
