"""The adapters against every backend: storage, mail, the platform database and its datasets."""
