"""The performance benchmark of issue 5 (not part of the test suite): see bench/README.md."""
