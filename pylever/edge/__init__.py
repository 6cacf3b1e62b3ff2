"""The HTTP edge: the app (``app``), its handlers (``service``), what it accepts
(``inbound``, ``signatures``, ``deliveries``), its limits (``http_limits``,
``http_server``, ``throttle``) and the codec endpoints for the Web UI (``codec_server``)."""
