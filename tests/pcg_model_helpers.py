"""Small heart-sound databases made of real PCG 2016 recordings (symlinked, never copied into
the repository) and one tiny trained model, shared by the PCG model tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def make_database(dst: Path, src: Path, n: int) -> list[str]:
    """``dst`` with ``n`` recordings of the database folder ``src`` (half abnormal, half normal
    where it has both) and their REFERENCE.csv lines; returns the names."""
    rows = [line.split(",") for line in (src / "REFERENCE.csv").read_text().split()]
    abnormal = [r for r in rows if r[1] == "1"]
    normal = [r for r in rows if r[1] == "-1"]
    chosen = abnormal[: (n + 1) // 2] + normal[: n // 2]
    dst.mkdir(parents=True, exist_ok=True)
    for name, _ in chosen:
        os.symlink(src / f"{name}.flac", dst / f"{name}.flac")
    (dst / "REFERENCE.csv").write_text("".join(f"{name},{label}\n" for name, label in chosen))
    return [name for name, _ in chosen]


@pytest.fixture(scope="session")
def tiny_pcg_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A PCG model trained for one epoch on 2 x 4 real recordings, with its leave-one-database-out card."""
    from ecgmon.models.pcg_data import database_folders, load_pcg
    from ecgmon.models.pcg_training import PcgSettings, train_and_export

    root = tmp_path_factory.mktemp("pcg-train")
    make_database(root / "db-a", data_dir / "pcg2016" / "training-a", 4)
    make_database(root / "db-b", data_dir / "pcg2016" / "training-b", 4)
    data = load_pcg(database_folders(root), print, progress=False, cache=False)
    out = tmp_path_factory.mktemp("pcg-model") / "pcg-tiny.pt"
    settings = PcgSettings(epochs=1, batch_size=4, progress=False, epoch_size=8)
    train_and_export(data, out, "ecgmon train pcg (test)", settings)
    return out


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_pcg_model: Path) -> Path:
    """The tiny model's calibration for the device of database d: ``ecgmon calibrate pcg`` on 30
    of its real recordings (at least 20 of acceptable quality) (their REFERENCE.csv lies beside them and is not read)."""
    from ecgmon.cli import main

    root = tmp_path_factory.mktemp("pcg-device")
    make_database(root / "d", data_dir / "pcg2016" / "training-d", 30)
    out = root / "cal.json"
    assert main(["calibrate", "pcg", str(root / "d"), "--out", str(out), "--model", str(tiny_pcg_model),
                 "--device", "cpu"]) == 0
    return out
