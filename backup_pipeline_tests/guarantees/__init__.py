"""The README's guarantees under faults, kills, hostile input, load, and for privacy."""
