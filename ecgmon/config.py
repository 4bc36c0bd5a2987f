"""The configuration: pydantic models of config.toml, validated strictly.

An unknown key or a bad value is one ``ConfigError`` naming the key (``dsp.lowpass_hz``)
and what is wrong. CLI flags override the file after it is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
import tomllib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]


class ConfigError(Exception):
    """A configuration file or value that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    folder: str = ""
    cache: str = ""

    def cache_dir(self) -> Path:
        if self.cache:
            return Path(self.cache).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "ecgmon"


class ReplayConfig(_Section):
    speed: float = Field(1.0, ge=0)
    chunk_s: PositiveFloat = 0.1
    loop: bool = False
    channel: int | str = 0


class SimulatorConfig(_Section):
    fs: float = Field(360.0, ge=50, le=2000)
    heart_rate_bpm: float = Field(72.0, ge=20, le=250)
    hr_std_bpm: float = Field(2.0, ge=0, le=50)
    noise_mv: float = Field(0.02, ge=0, le=5)
    ectopic_fraction: float = Field(0.05, ge=0, le=0.5)
    seed: int | None = None


class DspConfig(_Section):
    highpass_hz: PositiveFloat = 0.5
    lowpass_hz: PositiveFloat = 40.0
    order: int = Field(2, ge=1, le=8)
    notch_hz: Literal[0, 50, 60] = 0
    notch_q: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _band_is_ordered(self) -> "DspConfig":
        if self.highpass_hz >= self.lowpass_hz:
            raise ValueError("highpass_hz must be below lowpass_hz")
        return self


class DetectorConfig(_Section):
    refractory_s: float = Field(0.2, ge=0.1, le=0.4)
    t_wave_window_s: float = Field(0.36, ge=0.2, le=0.5)
    searchback_rr_factor: float = Field(1.66, ge=1.2, le=3.0)


class HeartRateConfig(_Section):
    update_s: PositiveFloat = 1.0
    intervals: int = Field(12, ge=4, le=64)
    short_intervals: int = Field(4, ge=1, le=16)
    long_rr_s: PositiveFloat = 1.2


class PublisherConfig(_Section):
    endpoint: str = "tcp://127.0.0.1:5555"
    # ROUTER socket for acknowledge/silence requests from dashboards; empty: none.
    control_endpoint: str = "tcp://127.0.0.1:5556"
    wave_fs: float = Field(125.0, ge=10, le=1000)
    wave_period_s: PositiveFloat = 0.2
    status_period_s: PositiveFloat = 1.0
    send_hwm: int = Field(10000, ge=1)


class SerialConfig(_Section):
    """Serial ECG devices; ``serial:PORT?fs=250&baud=115200&format=ascii`` overrides per source."""

    baud: int = Field(115200, ge=300, le=4_000_000)
    format: Literal["ascii", "binary"] = "ascii"
    fs: float = Field(250.0, ge=50, le=2000)
    # Physical value of one unit on the wire: mV = (value - offset) * scale_mv.
    scale_mv: PositiveFloat = 0.001
    offset: float = 0.0
    # Which number of an ASCII line (or channel of a binary frame) is the ECG.
    channel: int = Field(0, ge=0, le=15)
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 10.0


class MqttConfig(_Section):
    """MQTT telemetry; ``mqtt://host:1883/ward1/+/ecg`` names broker and topic per source."""

    # A fixed client id with a persistent session: the broker keeps QoS 1 messages for us
    # while the daemon is away and delivers them on reconnect.
    client_id: str = "ecgmon"
    qos: Literal[0, 1, 2] = 1
    clean_start: bool = False
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 10.0


class ModelsConfig(_Section):
    """Classifiers run by the daemon through the inference batcher."""

    # "auto" takes cuda when torch sees a GPU, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int = Field(64, ge=1, le=4096)
    max_batch_delay_ms: float = Field(20.0, ge=0, le=5000)
    # Model files (TorchScript .pt or torch.export .pt2, each with a .json card beside it);
    # relative paths are taken from the ecgmon package's shipped weights. Empty: not used.
    beat: str = "beat-cnn-bilstm.pt"
    segment: str = "segment-attention-cnn.pt"
    pcg: str = ""


class RunConfig(_Section):
    sources: list[str] = Field(default_factory=lambda: ["sim"])


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    dsp: DspConfig = Field(default_factory=DspConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    heart_rate: HeartRateConfig = Field(default_factory=HeartRateConfig)
    publisher: PublisherConfig = Field(default_factory=PublisherConfig)
    serial: SerialConfig = Field(default_factory=SerialConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"bad value for '{key}': {first['msg']}"


def parse_config(data: dict, origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{origin}: {_describe(err)}") from None


def default_config_path() -> Path | None:
    """``$ECGMON_CONFIG``, else ``./config.toml``, else none (built-in defaults)."""
    env = os.environ.get("ECGMON_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.is_file() else None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a config file; with no path, the default one or built-in defaults."""
    path = Path(path) if path is not None else default_config_path()
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data, str(path))
