"""Test support shared by the test suite and the chaos bench (not part of the installed package)."""
