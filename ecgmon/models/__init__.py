"""Training: datasets, networks, training loops and export of the model files the daemon loads.

It imports nothing of the daemon but its signal processing (``ecgmon.monitor.dsp``), so the
features a model trains on are the ones it is served; the card it writes is ``ecgmon.model_card``.
"""
