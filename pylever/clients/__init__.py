"""HTTP clients of Lever and Py: one request loop (``http``), a token bucket per key
(``ratelimit``), the worker's per-account Lever clients (``lever_accounts``), and which
trigger a Lever stage is (``triggers``)."""
