"""Operations: structured logs, Prometheus metrics (API and worker), pre-flight checks."""
