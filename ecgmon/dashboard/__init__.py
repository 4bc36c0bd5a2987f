"""The Rich terminal dashboard (a ZeroMQ subscriber like any other)."""
