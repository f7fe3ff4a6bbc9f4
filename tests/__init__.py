"""Kolosal's test suite. Imported before tests/conftest.py and every test module."""
import sys

# Cache bytecode (and pytest's rewritten test modules) even where PYTHONDONTWRITEBYTECODE is
# set: compiling kolosal and every test module from source again on each run costs 2-3 s of
# the pure lane's ~8 s. __pycache__ is git-ignored.
sys.dont_write_bytecode = False
