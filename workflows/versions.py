"""Patch ids of workflow shapes that have shipped (``workflow.patched``).

A change to a shipped workflow's commands goes behind a new id here; executions
started before it keep the old shape (docs/architecture.md, "Versioning").
"""

# The durable invitation (issue 10). Executions without its marker continue in
# workflows.shipped_v1.
DURABLE = "durable-invitation"
