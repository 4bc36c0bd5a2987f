"""The HTTP face of ecgmon (``ecgmon serve``, ``ecgmon run --http HOST:PORT``): analyses of
uploaded ECG and heart-sound files by the live pipeline, the live streams' state, health and
Prometheus metrics. Only the commands import it, and only when asked: the daemon never pays
for FastAPI otherwise (tests/test_package_layout.py holds both)."""
