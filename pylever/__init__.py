"""py-lever: the Lever <-> Py integration, grouped by concern.

- ``contracts``: what crosses a Temporal boundary (records, activity stubs, failure types,
  search attributes); imported by workflows and activities alike, imports nothing of ours.
- ``config``: the TOML file, the process environment, the reload on SIGHUP.
- ``clients``: the Lever and Py HTTP clients, their request loop and rate limits.
- ``temporal``: the glue to Temporal: the gateway (starts, signals, lists), the worker
  assembly and process, the payload codec, the Lever queue limits.
- ``edge``: the HTTP app: webhooks, callbacks, status, metrics, codec endpoints, limits.
- ``ops``: logs, metrics, pre-flight checks.

The workflows (``workflows/``) and activities (``activities/``) sit beside this package;
``tests/unit/test_layering.py`` holds which way the imports point.
"""
