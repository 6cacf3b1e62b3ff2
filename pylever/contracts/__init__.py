"""Everything that crosses a Temporal boundary: records (``records``), the activities'
names and signatures (``activities``), the failure types (``errors``), the search attributes.
Pure: no I/O, no import of the rest of py-lever."""
