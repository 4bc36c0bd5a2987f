"""Record resolution and loading: lookup order, download into the cache, clear errors.

PhysioNet is never contacted: an autouse fixture replaces ``wfdb.dl_database`` (the one
network call ``ecgmon.replay.records`` makes) with a stand-in that raises the
``requests.ConnectionError`` wfdb raises when physionet.org cannot be resolved. Tests of a
successful download swap in a stand-in that copies the real files from the shared data
folder, the way wfdb lays them out. Everything else uses the real recordings.
"""

from __future__ import annotations

from pathlib import Path
import shutil

import numpy as np
import pytest
import requests
import wfdb

from ecgmon.config import DataConfig
from ecgmon.replay.records import (
    Record,
    RecordError,
    load_record,
    record_stream_id,
    resolve_record,
)


class FakePhysioNet:
    """Stands in for ``wfdb.dl_database``; offline unless given a folder to serve from."""

    def __init__(self, serve_from: Path | None = None, atr_listed: bool = True) -> None:
        self.serve_from = serve_from
        self.atr_listed = atr_listed
        self.calls: list[dict] = []

    def __call__(self, db_dir, dl_dir, records="all", annotators="all", **_):
        self.calls.append({"db": db_dir, "dl_dir": Path(dl_dir), "records": records,
                           "annotators": annotators})
        if self.serve_from is None:
            # What wfdb raises offline (requests' DNS failure), message abridged.
            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool(host='physionet.org', port=443): Max retries exceeded"
            )
        if annotators is not None and not self.atr_listed:
            # What wfdb.io.download.get_annotators raises for a database without atr.
            raise ValueError("The database contains no annotators with extension: atr")
        src = self.serve_from / db_dir
        for rec in records:
            if not (src / f"{rec}.hea").is_file():
                raise FileNotFoundError(f"404: {db_dir}/{rec}.hea")
            Path(dl_dir).mkdir(parents=True, exist_ok=True)
            exts = [".hea", ".dat"] + ([".atr"] if annotators else [])
            for ext in exts:
                if (src / f"{rec}{ext}").is_file():
                    shutil.copyfile(src / f"{rec}{ext}", Path(dl_dir) / f"{rec}{ext}")


@pytest.fixture(autouse=True)
def physionet(monkeypatch: pytest.MonkeyPatch) -> FakePhysioNet:
    fake = FakePhysioNet()
    monkeypatch.setattr(wfdb, "dl_database", fake)
    return fake


def link_record(src: Path, dst: Path, name: str, exts=(".hea", ".dat", ".atr")) -> Path:
    """Symlink the files of a real record into ``dst``; returns the record base path."""
    dst.mkdir(parents=True, exist_ok=True)
    for ext in exts:
        if (src / f"{name}{ext}").is_file():
            (dst / f"{name}{ext}").symlink_to(src / f"{name}{ext}")
    return dst / name


def copy_record(src: Path, dst: Path, name: str, exts=(".hea", ".dat", ".atr")) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for ext in exts:
        shutil.copyfile(src / f"{name}{ext}", dst / f"{name}{ext}")
    return dst / name


def assert_no_chained_traceback(err: BaseException) -> None:
    """The user sees one message, not wfdb's traceback under it."""
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three empty places to look: $ECGMON_DATA, the data folder, the cache."""
    env, folder, cache = tmp_path / "env", tmp_path / "folder", tmp_path / "cache"
    for p in (env, folder, cache):
        p.mkdir()
    monkeypatch.setenv("ECGMON_DATA", str(env))
    return env, folder, cache, DataConfig(folder=str(folder), cache=str(cache))


# --------------------------------------------------------------------------- resolution


def test_lookup_order_env_then_folder_then_cache(roots, data_dir):
    env, folder, cache, data = roots
    for root in (env, folder, cache):
        link_record(data_dir / "mitdb", root / "mitdb", "100")
    assert resolve_record("mitdb:100", data) == env / "mitdb" / "100"
    shutil.rmtree(env / "mitdb")
    assert resolve_record("mitdb:100", data) == folder / "mitdb" / "100"
    shutil.rmtree(folder / "mitdb")
    assert resolve_record("mitdb:100", data) == cache / "mitdb" / "100"


def test_data_folder_used_when_ecgmon_data_unset(roots, data_dir, monkeypatch):
    _, folder, _, data = roots
    monkeypatch.delenv("ECGMON_DATA")
    link_record(data_dir / "nstdb", folder / "nstdb", "bw")
    assert resolve_record("nstdb:bw", data) == folder / "nstdb" / "bw"


def test_shared_data_found_through_ecgmon_data(data_dir, tmp_path):
    data = DataConfig(cache=str(tmp_path / "cache"))
    assert resolve_record("mitdb:100", data) == data_dir / "mitdb" / "100"


@pytest.mark.parametrize("form", ["{base}.hea", "{base}"])
def test_local_header_path(data_dir, tmp_path, form, physionet):
    base = link_record(data_dir / "mitdb", tmp_path / "elsewhere", "101")
    spec = form.format(base=base)
    assert resolve_record(spec, DataConfig()) == base
    record = load_record(spec, DataConfig())
    assert record.name == spec and record.n_samples == 650000
    assert physionet.calls == []


def test_relative_header_path(data_dir, tmp_path, monkeypatch):
    link_record(data_dir / "mitdb", tmp_path / "recs", "100")
    monkeypatch.chdir(tmp_path)
    assert resolve_record("recs/100.hea", DataConfig()) == Path("recs/100")


# --------------------------------------------------------------------------- download


def test_offline_without_local_copy_says_where_it_looked(roots, physionet):
    env, folder, cache, data = roots
    with pytest.raises(RecordError) as info:
        load_record("mitdb:100", data)
    msg = str(info.value)
    for place in (env, folder, cache):
        assert str(place / "mitdb" / "100.hea") in msg
    assert "ECGMON_DATA" in msg and "online" in msg and "physionet.org" in msg
    assert len(physionet.calls) == 1
    call = physionet.calls[0]
    assert call["db"] == "mitdb" and call["records"] == ["100"] and call["annotators"] == ["atr"]
    assert cache in call["dl_dir"].parents
    assert not (cache / "mitdb").exists(), "a failed download must leave nothing in the cache"
    assert_no_chained_traceback(info.value)


def test_offline_message_says_unset_places(tmp_path, monkeypatch):
    monkeypatch.delenv("ECGMON_DATA")
    with pytest.raises(RecordError, match=r"\$ECGMON_DATA \(not set\).*data\.folder \(not set\)"):
        resolve_record("afdb:04015", DataConfig(cache=str(tmp_path)))


def test_unknown_record_on_physionet(roots, data_dir, physionet):
    physionet.serve_from = data_dir
    with pytest.raises(RecordError, match="no such database or record"):
        resolve_record("mitdb:999", roots[3])


def test_download_lands_in_cache_then_found_locally(roots, data_dir, physionet):
    _, _, cache, data = roots
    physionet.serve_from = data_dir
    record = load_record("mitdb:100", data)
    assert record.path == cache / "mitdb" / "100"
    assert sorted(p.name for p in (cache / "mitdb").iterdir()) == ["100.atr", "100.dat", "100.hea"]
    assert record.ann_samples is not None and len(record.ann_samples) == 2274
    physionet.serve_from = None  # offline again: the cached copy must be enough
    assert load_record("mitdb:100", data).n_samples == 650000
    assert len(physionet.calls) == 1


def test_download_from_database_without_atr(roots, data_dir, physionet):
    _, _, cache, data = roots
    physionet.serve_from, physionet.atr_listed = data_dir, False
    record = load_record("nstdb:em", data)
    assert [c["annotators"] for c in physionet.calls] == [["atr"], None]
    assert record.ann_samples is None and record.ann_symbols is None
    assert (cache / "nstdb" / "em.hea").is_file()


def test_download_that_delivers_no_header(roots, monkeypatch):
    # wfdb returns without error but nothing arrived (e.g. an empty RECORDS entry).
    monkeypatch.setattr(wfdb, "dl_database", lambda *a, **k: None)
    with pytest.raises(RecordError, match="sent no header 100.hea"):
        resolve_record("mitdb:100", roots[3])
    assert not (roots[2] / "mitdb").exists()


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec",
    ["", "   ", "mitdb:", "mit db:100", "mitdb:10 0", "mitdb:../100", "mitdb:100;rm",
     "mitdb:/etc/passwd", "no-such-record", "missing/dir/x.hea", "mitdb/100.dat"],
)
def test_malformed_or_missing_spec(spec, tmp_path, physionet):
    with pytest.raises(RecordError) as info:
        resolve_record(spec, DataConfig(cache=str(tmp_path)))
    assert "\n" not in str(info.value)
    assert physionet.calls == [], "a malformed spec must not reach the network"


# --------------------------------------------------------------------------- corrupt files


def _garbage_header(base: Path) -> str:
    base.with_suffix(".hea").write_bytes(bytes(range(256)) * 3)
    return ".hea"


def _text_header(base: Path) -> str:
    base.with_suffix(".hea").write_text("this is not a WFDB header\nat all\n")
    return ".hea"


def _empty_header(base: Path) -> str:
    base.with_suffix(".hea").write_bytes(b"")
    return ".hea"


def _missing_dat(base: Path) -> str:
    base.with_suffix(".dat").unlink()
    return ".dat"


def _header_names_other_file(base: Path) -> str:
    hea = base.with_suffix(".hea")
    hea.write_bytes(hea.read_bytes().replace(b"100.dat", b"gone.dat"))
    return "gone.dat"


def _truncate(n_bytes: int):
    def cut(base: Path) -> str:
        dat = base.with_suffix(".dat")
        dat.write_bytes(dat.read_bytes()[:n_bytes])
        return ".dat"
    cut.__name__ = f"truncated_to_{n_bytes}"
    return cut


def _unsupported_format(base: Path) -> str:
    hea = base.with_suffix(".hea")
    hea.write_bytes(hea.read_bytes().replace(b" 212 ", b" 999 "))
    return ".hea"


def _garbage_atr(base: Path) -> str:
    base.with_suffix(".atr").write_bytes(b"\xff\xfe" * 10 + bytes(range(256)))
    return ".atr"


def _empty_atr(base: Path) -> str:
    base.with_suffix(".atr").write_bytes(b"")
    return ".atr"


@pytest.mark.parametrize(
    "damage",
    [_garbage_header, _text_header, _empty_header, _missing_dat, _header_names_other_file,
     _truncate(1_000_000), _truncate(999_999), _truncate(1_949_999), _truncate(0),
     _unsupported_format, _garbage_atr, _empty_atr],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_record_is_one_clear_error(damage, data_dir, tmp_path, physionet):
    base = copy_record(data_dir / "mitdb", tmp_path, "100")
    culprit = damage(base)
    with pytest.raises(RecordError) as info:  # any other exception type fails the test
        load_record(str(base) + ".hea", DataConfig())
    msg = str(info.value)
    assert culprit in msg, msg
    assert "\n" not in msg and len(msg) < 400, msg
    assert_no_chained_traceback(info.value)
    assert physionet.calls == []


def test_truncation_message_gives_sizes(data_dir, tmp_path):
    base = copy_record(data_dir / "mitdb", tmp_path, "100")
    _truncate(1_000_000)(base)
    with pytest.raises(RecordError, match=r"truncated: 1000000 bytes.*implies 1950000"):
        load_record(str(base), DataConfig())


def test_damaged_atr_ignored_when_annotations_not_wanted(data_dir, tmp_path):
    base = copy_record(data_dir / "mitdb", tmp_path, "100")
    _garbage_atr(base)
    record = load_record(str(base), DataConfig(), annotations=False)
    assert record.ann_samples is None and record.n_samples == 650000


# --------------------------------------------------------------------------- contents


def test_load_mitdb_100(data_dir, tmp_path):
    record = load_record("mitdb:100", DataConfig(cache=str(tmp_path)))
    ref = wfdb.rdrecord(str(data_dir / "mitdb" / "100"))
    assert isinstance(record, Record)
    assert record.name == "mitdb:100" and record.fs == 360.0
    assert record.channels == ("MLII", "V5") and record.units == ("mV", "mV")
    assert record.signal.dtype == np.float32 and record.signal.shape == (650000, 2)
    assert record.n_samples == 650000 and record.invalid_samples == 0
    np.testing.assert_allclose(record.signal, ref.p_signal, atol=1e-6)
    assert record.ann_samples.dtype == np.int64 and len(record.ann_samples) == 2274
    assert len(record.ann_symbols) == 2274 and record.ann_symbols.count("N") == 2239


def test_noise_record_has_no_annotations(tmp_path):
    record = load_record("nstdb:ma", DataConfig(cache=str(tmp_path)))
    assert record.ann_samples is None and record.ann_symbols is None
    assert record.n_samples == 650000 and record.channels == ("noise1", "noise2")


def test_annotations_can_be_skipped(tmp_path):
    record = load_record("mitdb:100", DataConfig(cache=str(tmp_path)), annotations=False)
    assert record.ann_samples is None and record.ann_symbols is None


def test_invalid_samples_are_held_and_counted(tmp_path):
    nan = np.nan
    signal = np.array([[nan, 0.1], [0.5, nan], [nan, nan], [0.7, 0.2], [0.8, nan]])
    wfdb.wrsamp("gaps", fs=250, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal,
                fmt=["16", "16"], adc_gain=[200, 200], baseline=[0, 0], write_dir=str(tmp_path))
    record = load_record(str(tmp_path / "gaps.hea"), DataConfig())
    expected = [[0.0, 0.1], [0.5, 0.1], [0.5, 0.1], [0.7, 0.2], [0.8, 0.2]]
    np.testing.assert_allclose(record.signal, expected, atol=1e-6)
    assert not np.isnan(record.signal).any()
    assert record.invalid_samples == 5 and record.fs == 250.0


# --------------------------------------------------------------------------- channels, ids


@pytest.mark.parametrize("channel, index", [(0, 0), (1, 1), ("MLII", 0), ("V5", 1), ("v5", 1),
                                            ("1", 1), (np.int64(1), 1)])
def test_channel_index(channel, index, tmp_path):
    record = load_record("mitdb:100", DataConfig(cache=str(tmp_path)), annotations=False)
    assert record.channel_index(channel) == index


@pytest.mark.parametrize("channel, words", [("V1", "MLII, V5"), (2, "0..1"), (-1, "0..1"),
                                            (True, "index or a name"), (1.5, "index or a name")])
def test_bad_channel(channel, words, tmp_path):
    record = load_record("mitdb:100", DataConfig(cache=str(tmp_path)), annotations=False)
    with pytest.raises(RecordError, match=words):
        record.channel_index(channel)


@pytest.mark.parametrize(
    "spec, stream",
    [("mitdb:100", "mitdb-100"), ("nstdb:118e06", "nstdb-118e06"), ("afdb:04015", "afdb-04015"),
     ("/x/y/rec.hea", "rec"), ("/x/y/rec", "rec"), ("rel/a.b.hea", "a-b"),
     ("ptbdb:patient001/s0010_re", "ptbdb-patient001-s0010_re"), ("/x/y/ü n.hea", "n")],
)
def test_record_stream_id(spec, stream):
    assert record_stream_id(spec) == stream
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in record_stream_id(spec))



def test_second_lead_is_another_signal_in_the_same_unit():
    # The beat model's second view of the heart: another ECG lead, never a pressure or EEG
    # signal recorded beside it (polysomnography and ICU records carry those).
    signal = np.zeros((10, 4), np.float32)
    rec = Record("x", 250.0, ("BP", "ECG", "Resp", "V1"), signal, ("mmHg", "mV", "l", "MV"))
    assert rec.second_channel(1) == 3
    assert rec.second_channel(3) == 1
    one = Record("y", 250.0, ("ECG", "BP"), signal[:, :2], ("mV", "mmHg"))
    assert one.second_channel(0) is None
