"""Tests of the backup pipeline."""
