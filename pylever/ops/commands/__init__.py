"""The operator commands of ``cli.py``, one module per command family."""
