"""The glue to Temporal: the gateway the API uses (``gateway``), the worker's parts
(``workers``) and process (``worker_process``), the payload codec, the shared Lever queue's
limits and the drain of the old per-account queues, accounts no longer configured."""
