"""The zip the clinic downloads: its layout, names, and streaming assembly."""
