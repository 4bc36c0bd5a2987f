"""The configuration: pydantic models of config.toml, validated strictly.

An unknown key or a bad value is one ``ConfigError`` naming the key (``dsp.lowpass_hz``)
and what is wrong. CLI flags override the file after it is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
import tomllib
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecgmon.rates import check_ecg_rate

PositiveFloat = Annotated[float, Field(gt=0)]
# A rate the QRS detector handles (ecgmon.rates), refused at load rather than at stream start.
EcgRate = Annotated[float, AfterValidator(check_ecg_rate)]


class ConfigError(Exception):
    """A configuration file or value that cannot be used; the message names the key."""


class _Section(BaseModel):
    # TOML reads `nan` and `inf` as floats; no setting means either.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    second_lead: bool = True  # the record's other lead as the chunks' second column


class SimulatorConfig(_Section):
    fs: EcgRate = 360.0
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
    # A stream of a many-stream source (an MQTT topic) silent this long leaves the status.
    idle_stream_s: PositiveFloat = 300.0


class SecurityConfig(_Section):
    """CURVE keys (``ecgmon keys``). With ``server_key`` and ``allowed_keys`` the daemon's
    publisher and control socket let in only the allowed clients; ``key`` and
    ``server_public`` are what ``subscribe`` and ``dashboard`` connect with. Each pair goes
    together (checked where it is used, after the command-line flags)."""

    server_key: str = ""  # the daemon's secret key file, e.g. keys/server.key_secret
    allowed_keys: str = ""  # folder of allowed clients' public keys, e.g. keys/allowed
    key: str = ""  # a client's secret key file, e.g. keys/nurse1.key_secret
    server_public: str = ""  # the daemon's public key file, e.g. keys/server.key
    # Bind beyond loopback without keys: anyone on the network may read and acknowledge.
    insecure: bool = False


class SerialConfig(_Section):
    """Serial ECG devices; ``serial:PORT?fs=250&baud=115200&format=ascii`` overrides per source."""

    baud: int = Field(115200, ge=300, le=4_000_000)
    format: Literal["ascii", "binary"] = "ascii"
    fs: EcgRate = 250.0
    # Physical value of one unit on the wire: mV = (value - offset) * scale_mv.
    scale_mv: PositiveFloat = 0.001
    offset: float = 0.0
    # Which number of an ASCII line (or channel of a binary frame) is the ECG.
    channel: int = Field(0, ge=0, le=15)
    # Which one is a second ECG lead (None: none): the chunks' second column, which beat models
    # may use; a line or frame without it gives NaN there, never a lost first lead.
    lead2: int | None = Field(None, ge=0, le=15)
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _lead2_is_another_channel(self) -> SerialConfig:
        if self.lead2 is not None and self.lead2 == self.channel:
            raise ValueError(f"lead2 must be another channel than channel ({self.channel})")
        return self


class MqttConfig(_Section):
    """MQTT telemetry; ``mqtt://host:1883/ward1/+/ecg`` names broker and topic per source."""

    # A fixed client id with a persistent session: the broker keeps QoS 1 messages for us
    # while the daemon is away and delivers them on reconnect.
    client_id: str = "ecgmon"
    qos: Literal[0, 1, 2] = 1
    clean_start: bool = False
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str = ""
    password: str = Field("", repr=False)  # never in a repr, should a config end up in a log
    tls: bool = False
    ca_file: str = ""
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 10.0
    # Streams one source may carry; messages on further topics are counted and ignored, so
    # that a flood of topics cannot grow the daemon's state (and its status message) unbounded.
    max_streams: int = Field(64, ge=1, le=10_000)
    # The payloads' second lead (samples2) as the chunks' second column, which beat models may
    # use; a payload without it gives NaN there (an event once per stream), never a lost first lead.
    second_lead: bool = False


class AudioConfig(_Section):
    """Stethoscope audio (`--pcg mic`, `--pcg mic:DEVICE`, `--pcg FILE.wav`) and its analysis."""

    # Device rate to open a microphone at; 0 is the device's default (resampled to 2 kHz).
    samplerate: float = Field(0.0, ge=0, le=384000)
    # Audio is handed over in blocks of this many seconds.
    block_s: float = Field(0.05, ge=0.005, le=1.0)
    # No callback from the device for this long: it is reported gone, then reopened.
    stall_s: PositiveFloat = 2.0
    reconnect_s: PositiveFloat = 2.0
    # Quieter than silence_dbfs for silence_s is "no sound"; more than clip_fraction of a
    # second's samples at full scale is clipping.
    silence_dbfs: float = Field(-70.0, ge=-140, le=-20)
    silence_s: PositiveFloat = 1.0
    clip_fraction: float = Field(0.01, gt=0, le=1)
    # Heart-sound messages: one every update_s, envelope decimated to envelope_fs.
    update_s: float = Field(0.5, ge=0.1, le=10)
    envelope_fs: Literal[25, 50, 100, 200] = 50
    # Windows of the heart-sound model with a quality index below this are left out of the
    # recording's verdict.
    min_quality: float = Field(0.5, ge=0, le=1)
    # The stethoscope's calibration (`ecgmon calibrate pcg`, or `ecgmon run --pcg-calibration`):
    # where this device puts the cycle rule's features and the model's scores. Without one, the
    # cycle rule (and a model whose card rules on the calibrated score) says "uncertain: device
    # not calibrated" instead of a verdict.
    calibration: str = ""


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
    pcg: str = "pcg-mel-cnn.pt"
    # The heart-sound verdict from the segmented cardiac cycle (a rule file; monitor/dsp/pcg_cycles.py):
    # when set, it gives pcg_class instead of the pcg model, which is then not run. The default
    # because, left out database by database, it scores better than the pcg model on all four
    # pcg2016 databases and on the mean (MAcc 0.692 against 0.587, the families' mean of
    # docs/pcg-attempts.md pcg8, a figure found after looking: 0.642 with the scoring method also
    # chosen by the protocol, pcg9; I's pool choice before it 0.635), and better than chance on b,
    # where the model is not (README: Classifiers, heart sounds). Empty: the pcg model's verdict.
    pcg_cycles: str = "pcg-cycles.json"
    # Pool the beat model's P(V) over the stream's beats of one QRS shape
    # (monitor/dsp/beat_clusters.py): off gives the model's call of each beat alone.
    vote: bool = True


# The alarm kinds the engine raises (ecgmon.monitor.alarms.kinds has their priorities).
ALARM_KINDS = (
    "asystole", "vfib", "vtach", "brady", "tachy", "hr_high", "hr_low", "afib",
    "pvc_run", "couplet", "bigeminy", "trigeminy",
    "leads_off", "noise", "signal_loss", "clipping",
)


class AlarmsConfig(_Section):
    """Alarm limits. Defaults follow the usual bedside definitions (IEC 60601-2-27 style, as
    used by the PhysioNet/CinC 2015 false-alarm challenge); see config.toml for each."""

    enabled: bool = True
    asystole_s: float = Field(4.0, ge=2, le=15)
    vfib_s: float = Field(4.0, ge=2, le=15)
    vtach_beats: int = Field(5, ge=3, le=30)
    vtach_bpm: float = Field(100.0, ge=60, le=200)
    brady_bpm: float = Field(40.0, ge=20, le=80)
    brady_beats: int = Field(5, ge=2, le=30)
    tachy_bpm: float = Field(140.0, ge=100, le=250)
    tachy_beats: int = Field(17, ge=2, le=60)
    hr_low_bpm: float = Field(50.0, ge=20, le=150)
    hr_high_bpm: float = Field(120.0, ge=60, le=250)
    hr_limit_s: float = Field(10.0, ge=0, le=120)
    afib_beats: int = Field(48, ge=16, le=256)
    afib_hold_s: float = Field(30.0, ge=0, le=600)
    bigeminy_cycles: int = Field(4, ge=2, le=20)
    trigeminy_cycles: int = Field(4, ge=2, le=20)
    clear_s: float = Field(5.0, ge=0, le=120)
    latch: list[str] = Field(default_factory=lambda: ["asystole", "vfib", "vtach"])
    leads_off_mv: float = Field(0.03, ge=0, le=1)
    signal_loss_s: float = Field(4.0, ge=0.5, le=120)
    noise_ratio: float = Field(5.0, ge=1.2, le=50)
    clipping_fraction: float = Field(0.02, ge=0.001, le=1)
    suppress: bool = True

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> "AlarmsConfig":
        if self.hr_low_bpm >= self.hr_high_bpm:
            raise ValueError("hr_low_bpm must be below hr_high_bpm")
        unknown = sorted(set(self.latch) - set(ALARM_KINDS))
        if unknown:
            raise ValueError(f"latch names unknown alarm kinds {unknown}; known: {', '.join(ALARM_KINDS)}")
        return self


class ArchiveConfig(_Section):
    """Full disclosure: every stream's signal, beats, alarms and events on disk in WFDB
    (ecgmon.archive), with an audit log; ``ecgmon run --archive DIR`` / ``--no-archive``."""

    enabled: bool = True
    # Empty: $ECGMON_ARCHIVE, else $XDG_DATA_HOME/ecgmon/archive (~/.local/share/ecgmon/archive).
    folder: str = ""
    segment_s: float = Field(60.0, ge=1, le=3600)
    keep_days: float = Field(30.0, ge=0)  # 0: no age limit
    max_gb: float = Field(20.0, ge=0)  # 0: no size limit
    # Chunks and messages waiting for the writer thread; beyond, they are dropped and counted.
    queue_items: int = Field(20000, ge=10, le=10_000_000)

    def root(self) -> Path:
        if self.folder:
            return Path(self.folder).expanduser()
        env = os.environ.get("ECGMON_ARCHIVE")
        if env:
            return Path(env).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "ecgmon" / "archive"


class HttpConfig(_Section):
    """The HTTP face (``ecgmon serve``, ``ecgmon run --http HOST:PORT``; README: HTTP API)."""

    listen: str = "127.0.0.1:8080"
    # Uploads beyond these are refused (413) before any analysis starts.
    max_upload_mb: float = Field(64.0, gt=0, le=4096)
    max_duration_s: float = Field(3600.0, gt=0, le=7 * 86400)
    # Analyses run in `workers` worker processes ("process": an upload never holds the live
    # event loop's interpreter) or threads of this process; `queue` more wait, beyond: 429.
    pool: Literal["process", "thread"] = "process"
    workers: int = Field(1, ge=1, le=64)
    queue: int = Field(4, ge=0, le=1000)
    # A file holding the bearer token clients must send; $ECGMON_HTTP_TOKEN wins over it.
    # Without a token or TLS only a loopback address may be bound (or with [security] insecure).
    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""


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
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    serial: SerialConfig = Field(default_factory=SerialConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if not key.isprintable():  # a key with a newline or control character stays on one line
        key = key.encode("unicode_escape").decode("ascii")
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    # A validator's own ValueError reads "Value error, <its message>": the message says it all.
    return f"bad value for '{key}': {first['msg'].removeprefix('Value error, ')}"


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
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as err:  # permission denied, I/O error, ...
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file in UTF-8 (byte {err.start}); TOML must be UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    config = parse_config(data, str(path))
    if config.mqtt.password and os.stat(path).st_mode & 0o077:
        # Never an error (a container may run as anyone), but a password others can read is no secret.
        logging.getLogger("ecgmon.config").warning(
            "%s holds [mqtt] password and other users can read it: chmod 600 %s", path, path)
    return config
