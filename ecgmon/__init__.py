"""ecgmon: a real-time cardiac monitoring daemon (streaming ECG, online R-peaks, ZeroMQ out)."""

__version__ = "0.1.0"
