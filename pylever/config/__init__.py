"""Configuration: the TOML file (``file``), the process environment (``environment``), and
re-reading the file on SIGHUP (``reload``)."""
