"""The built-in simulator as a live source: an endless ECGSYN-style ECG paced like a device,
so ``ecgmon run`` shows beats at once with no record to download."""

from __future__ import annotations

from typing import AsyncIterator


from ecgmon.chunk import Chunk
from ecgmon.config import ReplayConfig, SimulatorConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.spec_query import apply_query
from ecgmon.replay.ecgsyn import ECGSynth
from ecgmon.replay.pacing import Pacer

# Short spec names (as in config.toml's [run] comment) and the config fields they set.
SPEC_PARAMS = {
    "hr": "heart_rate_bpm",
    "hr_std": "hr_std_bpm",
    "noise": "noise_mv",
    "ectopic": "ectopic_fraction",
    "fs": "fs",
    "seed": "seed",
}


def parse_sim_spec(spec: str, base: SimulatorConfig) -> SimulatorConfig:
    """``sim`` or ``sim?hr=110&hr_std=3&noise=0.05&ectopic=0.2&fs=250&seed=1``: ``base`` with
    those overrides (the full field names work too), validated by the config model."""
    name, _, query = spec.partition("?")
    if name != "sim":
        raise SourceError(f"'{spec}' is not a simulator spec: write sim or sim?hr=110&noise=0.05")
    # The full field names work too.
    params = {**SPEC_PARAMS, **{f: f for f in SPEC_PARAMS.values()}}
    return apply_query(spec, query, base, params, "simulator")


class SimulatorSource:
    """Chunks of ``replay.chunk_s`` seconds from an ``ECGSynth``, forever, paced by
    ``replay.speed``. ``synth`` keeps the true R peaks and beat kinds for evaluation."""

    def __init__(
        self,
        config: SimulatorConfig,
        replay: ReplayConfig,
        stream: str = "sim",
        spec: str = "sim",
    ) -> None:
        self.stream = stream
        self.spec = spec
        self.config = config
        self.fs = float(config.fs)
        self.lead = "sim"
        self.speed = float(replay.speed)
        self.chunk_n = max(1, round(replay.chunk_s * self.fs))
        self.synth = ECGSynth(config)

    async def chunks(self) -> AsyncIterator[Chunk]:
        pacer = Pacer(self.fs, self.speed)
        origin = self.synth.position
        while True:
            start = self.synth.position
            # A device delivers a chunk once its last sample has been measured.
            await pacer.wait_until(start + self.chunk_n - origin)
            x = self.synth.generate(self.chunk_n)
            yield Chunk(self.stream, self.fs, (self.lead,), start, x.reshape(-1, 1))
