"""The exported datasets, one module each."""
