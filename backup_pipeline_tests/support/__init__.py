"""Test fixtures that start real components: databases, the GCS emulator, a loopback mail endpoint."""
