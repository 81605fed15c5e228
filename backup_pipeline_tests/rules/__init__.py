"""Pure domain rules: no Dagster, no I/O (quota, checks, cleaning, CFDI, names, mail text...)."""
