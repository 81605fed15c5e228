"""Adapters to the outside world: the platform database, object storage, mail."""
