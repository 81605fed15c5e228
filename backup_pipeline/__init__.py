"""Respaldo de información: the Dagster code location that backs up a clinic."""
