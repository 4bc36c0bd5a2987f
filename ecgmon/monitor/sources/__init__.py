"""Sources that turn records, simulators and devices into Chunks."""
