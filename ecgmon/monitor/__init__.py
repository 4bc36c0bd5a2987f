"""The daemon: sources, signal processing, stream pipelines, publisher and wiring."""
