"""The serial wire formats: round trips, every byte boundary, and malformed input of every kind
(empty, letters, huge, NaN, truncated, corrupted, random) — always counted, never raised."""

from __future__ import annotations

import numpy as np
import pytest

from ecgmon.payloads.serial import (
    MAX_LINE,
    AsciiDecoder,
    FrameDecoder,
    crc16,
    encode_ascii,
    encode_frame,
    frame_size,
    from_wire,
    to_wire,
)

SEEDS = range(6)


def feed_pieces(decoder, data: bytes, rng: np.random.Generator, max_piece: int = 64):
    """Feed ``data`` in random-sized pieces; the decoded outputs concatenated."""
    out, pos = [], 0
    while pos < len(data):
        step = int(rng.integers(1, max_piece + 1))
        out.append(decoder.feed(data[pos : pos + step]))
        pos += step
    return out


# --------------------------------------------------------------------------- ASCII


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1  # the catalogue check value of CRC-16/CCITT-FALSE


def test_ascii_columns_separators_and_line_ends() -> None:
    dec = AsciiDecoder(channel=1)
    out = dec.feed(b"1,2,3\n4;5;6\r\n7 8\t9\n  10 , 11 ,12  \r\n")
    assert out.tolist() == [2.0, 5.0, 8.0, 11.0]
    assert (dec.lines, dec.bad_lines, dec.garbage_bytes) == (4, 0, 0)
    assert dec.columns == 3


def test_ascii_empty_and_blank_input() -> None:
    dec = AsciiDecoder()
    assert dec.feed(b"").size == 0
    assert dec.feed(b"\n\r\n  \n\t\r\n").size == 0
    assert dec.counts() == {"lines": 0, "bad_lines": 0, "overlong_lines": 0, "garbage_bytes": 0}


def test_ascii_partial_lines_at_every_boundary() -> None:
    data = encode_ascii(np.array([[-145, 3], [0, 7], [12345, -1]])) + b"-2.5e1,4\n"
    whole = AsciiDecoder().feed(data)
    assert whole.tolist() == [-145.0, 0.0, 12345.0, -25.0]
    for cut in range(len(data) + 1):
        dec = AsciiDecoder()
        got = np.concatenate([dec.feed(data[:cut]), dec.feed(data[cut:])])
        assert got.tolist() == whole.tolist(), cut
    dec = AsciiDecoder()
    assert np.concatenate([dec.feed(data[i : i + 1]) for i in range(len(data))]).tolist() == whole.tolist()


@pytest.mark.parametrize(
    "line",
    [b"abc", b"12a", b"nan", b"NaN", b"inf", b"-Infinity", b"1e999", b"1_000", b"0x1F", b"--3",
     b"1.2.3", b"+", b"1 x", b"\x00\x01 12", b"12\xff"],
)
def test_ascii_bad_lines_keep_the_clock(line: bytes) -> None:
    dec = AsciiDecoder()
    out = dec.feed(b"1\n" + line + b"\n2\n")
    assert out.shape == (3,) and out[0] == 1.0 and out[2] == 2.0
    assert np.isnan(out[1]), line
    assert (dec.lines, dec.bad_lines) == (3, 1)


def test_ascii_garbage_bytes_are_counted() -> None:
    dec = AsciiDecoder()
    out = dec.feed(b"\x00\xff\x1b\n5\n\x80\x81")
    assert dec.garbage_bytes == 5
    assert np.isnan(out[0]) and out[1] == 5.0


def test_ascii_huge_line_is_dropped_without_growing() -> None:
    dec = AsciiDecoder()
    assert dec.feed(b"7\n").tolist() == [7.0]
    for _ in range(1000):  # 1 MB without a newline, in pieces
        assert dec.feed(b"1" * 1000).size == 0
        assert len(dec._partial) <= MAX_LINE
    out = dec.feed(b"23\n8\n")  # the tail of the huge line goes with it
    assert out.tolist() == [8.0]
    assert dec.overlong_lines == 1 and dec.bad_lines == 0
    big = AsciiDecoder().feed(b"9" * (MAX_LINE + 1) + b"\n3\n")  # whole in one piece
    assert big.tolist() == [3.0]


def test_ascii_column_count_changes() -> None:
    dec = AsciiDecoder()
    out = dec.feed(b"1,2\n3,4\n5\n6,7,8\n9,10\n")
    assert np.isnan(out[2]) and np.isnan(out[3]) and out[4] == 9.0  # merged or cut lines
    # A new count that persists is adopted (the device was reconfigured).
    out = dec.feed(b"1\n2\n3\n4\n5\n6\n")
    assert np.isnan(out[:3]).all() and out[3:].tolist() == [4.0, 5.0, 6.0]
    assert dec.columns == 1


def test_ascii_channel_beyond_columns() -> None:
    dec = AsciiDecoder(channel=2)
    out = dec.feed(b"1,2\n1,2,3\n")  # the second: the column count changed
    assert np.isnan(out).all() and dec.bad_lines == 2 and dec.columns == 2


def test_ascii_resync_drops_the_first_line() -> None:
    dec = AsciiDecoder()
    dec.feed(b"12")
    dec.reset(resync=True)
    assert dec.feed(b"45\n6\n7\n").tolist() == [6.0, 7.0]
    dec.reset(resync=False)
    assert dec.feed(b"8\n").tolist() == [8.0]


def test_ascii_round_trip_in_wire_units() -> None:
    rng = np.random.default_rng(1)
    mv = rng.normal(0, 1.5, size=(500, 3)).astype(np.float32)
    units = to_wire(mv, 0.001, 512)
    dec = AsciiDecoder(channel=2)
    back = from_wire(dec.feed(encode_ascii(units)), 0.001, 512)
    assert np.abs(back - mv[:, 2]).max() <= 0.0005 + 1e-6
    assert encode_ascii(np.array([], dtype=np.int64)) == b""
    assert encode_ascii(np.array([1, -2]), newline=b"\n") == b"1\n-2\n"


@pytest.mark.parametrize("seed", SEEDS)
def test_ascii_random_bytes_never_raise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    # Mostly digits, separators and newlines too, so that some lines parse.
    text = rng.choice(list(b"0123456789-+.,; \r\n\neE"), 20000).astype(np.uint8).tobytes()
    for blob in (data, text, data + text):
        dec = AsciiDecoder(channel=int(rng.integers(0, 3)))
        out = np.concatenate(feed_pieces(dec, blob, rng))
        assert out.size == dec.lines
        assert np.isnan(out).sum() == dec.bad_lines
        assert np.isfinite(out[~np.isnan(out)]).all()
        assert len(dec._partial) <= MAX_LINE
    assert dec.garbage_bytes > 0


# --------------------------------------------------------------------------- binary frames


def frames_stream(n_frames: int, n: int = 36, ch: int = 1, seq0: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    blocks = [rng.integers(-32768, 32768, size=(n, ch)).astype(np.int16) for _ in range(n_frames)]
    data = b"".join(encode_frame((seq0 + i) & 0xFFFF, b) for i, b in enumerate(blocks))
    return data, blocks


def test_frame_layout() -> None:
    frame = encode_frame(0x1234, np.array([[1, -2], [3, 4]], dtype=np.int16))
    assert len(frame) == frame_size(2, 2) == 7 + 8 + 2
    assert frame[:7] == bytes([0xA5, 0x5A, 0x10, 0x34, 0x12, 2, 2])
    assert frame[7:15] == np.array([1, -2, 3, 4], dtype="<i2").tobytes()
    assert int.from_bytes(frame[15:], "little") == crc16(frame[2:15])


@pytest.mark.parametrize("ch, channel", [(1, 0), (3, 2)])
def test_frame_round_trip(ch: int, channel: int) -> None:
    data, blocks = frames_stream(20, n=255 if ch == 1 else 17, ch=ch)
    dec = FrameDecoder(channel)
    frames = dec.feed(data)
    assert [f.seq for f in frames] == list(range(20))
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]),
                                  np.concatenate([b[:, channel] for b in blocks]))
    assert all(f.lost == 0 for f in frames)
    assert dec.counts() == {"frames": 20, "crc_errors": 0, "bad_frames": 0, "garbage_bytes": 0,
                            "lost_frames": 0, "lost_samples": 0, "seq_restarts": 0}


def test_frame_split_at_every_byte_boundary() -> None:
    data, blocks = frames_stream(3, n=5)
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        frames = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert [f.seq for f in frames] == [0, 1, 2], cut
        assert dec.garbage_bytes == 0
    dec = FrameDecoder()
    frames = [f for i in range(len(data)) for f in dec.feed(data[i : i + 1])]
    assert np.concatenate([f.samples for f in frames]).tolist() == np.concatenate(blocks)[:, 0].tolist()


def test_frame_empty_and_garbage_between_frames() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    a = encode_frame(0, np.arange(4, dtype=np.int16))
    b = encode_frame(1, np.arange(4, dtype=np.int16))
    frames = dec.feed(b"hello" + a + b"\x00" * 10 + b"\xa5" + b)
    assert [f.seq for f in frames] == [0, 1]
    assert dec.garbage_bytes == 16
    assert dec.feed(b"\xa5") == [] and len(dec._buf) == 1  # maybe the start of a sync


def test_every_single_byte_corruption_is_caught() -> None:
    good = encode_frame(7, np.arange(-10, 10, dtype=np.int16))
    # Enough frames after it to cover any length a corrupted header may claim.
    after = b"".join(encode_frame(s, np.full(20, 99, dtype=np.int16)) for s in range(8, 20))
    for pos in range(len(good)):
        for bit in (0x01, 0x80):
            bad = bytearray(good)
            bad[pos] ^= bit
            dec = FrameDecoder()
            frames = dec.feed(bytes(bad) + after)
            # The corrupted frame never comes out; the ones after it always do.
            assert [f.seq for f in frames] == list(range(8, 20)), (pos, bit)
            assert frames[0].samples.tolist() == [99.0] * 20
            if pos >= 2:
                assert dec.crc_errors + dec.bad_frames >= 1, (pos, bit)


def test_truncated_frames() -> None:
    frames = [encode_frame(i, np.full(36, i, dtype=np.int16)) for i in range(6)]
    for cut in (1, 2, 6, 7, 20, len(frames[0]) - 1):
        dec = FrameDecoder()
        data = frames[0] + frames[1] + frames[2][:cut] + frames[3] + frames[4] + frames[5]
        got = dec.feed(data)
        assert [f.seq for f in got] == [0, 1, 3, 4, 5], cut
        assert got[2].lost == 36 and dec.lost_frames == 1 and dec.lost_samples == 36
        assert dec.crc_errors + dec.bad_frames >= (1 if cut >= 7 else 0)
    # A frame cut at the very end just waits for the rest.
    dec = FrameDecoder()
    assert [f.seq for f in dec.feed(frames[0] + frames[1][:-1])] == [0]
    assert [f.seq for f in dec.feed(frames[1][-1:])] == [1]


def test_sequence_wrap_gaps_and_restarts() -> None:
    block = np.zeros(10, dtype=np.int16)
    dec = FrameDecoder()
    got = dec.feed(b"".join(encode_frame(s, block) for s in (65534, 65535, 0, 1)))
    assert [f.lost for f in got] == [0, 0, 0, 0] and dec.lost_frames == 0
    dec.feed(encode_frame(0, block))  # backwards: the device restarted its counter
    assert (dec.seq_restarts, dec.lost_frames) == (1, 0)
    dec = FrameDecoder()
    got = dec.feed(b"".join(encode_frame(s, block) for s in (65533, 1)))  # 65534, 65535, 0 lost
    assert got[1].lost == 30 and (dec.lost_frames, dec.lost_samples) == (3, 30)


@pytest.mark.parametrize(
    "header",
    [
        bytes([0xA5, 0x5A, 0x10, 0, 0, 0, 1]),  # n = 0
        bytes([0xA5, 0x5A, 0x10, 0, 0, 5, 0]),  # no channels
        bytes([0xA5, 0x5A, 0x10, 0, 0, 5, 17]),  # too many channels
        bytes([0xA5, 0x5A, 0x20, 0, 0, 5, 1]),  # unknown version
    ],
)
def test_impossible_headers(header: bytes) -> None:
    dec = FrameDecoder()
    good = encode_frame(3, np.arange(5, dtype=np.int16))
    got = dec.feed(header + good)
    assert [f.seq for f in got] == [3] and dec.bad_frames == 1


def test_missing_channel_is_a_bad_frame() -> None:
    dec = FrameDecoder(channel=2)
    assert dec.feed(encode_frame(0, np.zeros((4, 2), dtype=np.int16))) == []
    assert (dec.frames, dec.bad_frames, dec.channels) == (1, 1, 2)


# --------------------------------------------------------------------------- a second lead


def test_ascii_second_lead_beside_the_first() -> None:
    dec = AsciiDecoder(channel=0, lead2=2)
    out = dec.feed_leads(b"1,9,2\n3;9;4\n5 9 6\n")
    assert out.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert dec.counts()["lead2_missing"] == 0
    # feed keeps giving the first lead alone, as for a one-lead source.
    assert AsciiDecoder(channel=0, lead2=2).feed(b"1,9,2\n").tolist() == [1.0]
    # Without lead2: one column, and no lead2_missing counter (nothing was asked for).
    one = AsciiDecoder()
    assert one.feed_leads(b"1,2\n").shape == (1, 1) and "lead2_missing" not in one.counts()


@pytest.mark.parametrize("token", [b"nan", b"NaN", b"inf", b"1e999", b"x", b"--3", b"lead-off", b"0x1F"])
def test_ascii_bad_second_lead_value_costs_the_second_lead_only(token: bytes) -> None:
    dec = AsciiDecoder(channel=0, lead2=1)
    out = dec.feed_leads(b"1,2\n3," + token + b"\n5,6\n")
    assert out[:, 0].tolist() == [1.0, 3.0, 5.0]  # the first lead, every line
    assert out[0, 1] == 2.0 and np.isnan(out[1, 1]) and out[2, 1] == 6.0
    assert (dec.bad_lines, dec.lead2_missing) == (0, 1)


def test_ascii_damage_elsewhere_still_costs_both_leads() -> None:
    # A bad first value or a bad other column, a changed column count: the line cannot be trusted.
    dec = AsciiDecoder(channel=0, lead2=1)
    out = dec.feed_leads(b"1,2,3\nx,2,3\n1,2,x\n1,2\n4,5,6\n")
    assert out[0].tolist() == [1, 2] and out[4].tolist() == [4, 5]
    assert np.isnan(out[1:4]).all()
    assert (dec.bad_lines, dec.lead2_missing) == (3, 0)


def test_ascii_device_without_the_second_column() -> None:
    dec = AsciiDecoder(channel=0, lead2=1)
    out = dec.feed_leads(b"1\n2\n3\n")
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0] and np.isnan(out[:, 1]).all()
    assert (dec.bad_lines, dec.lead2_missing, dec.columns) == (0, 3, 1)


def test_ascii_two_leads_at_every_boundary() -> None:
    data = encode_ascii(np.array([[-145, 3], [0, 7], [12345, -1]])) + b"-2.5e1,nan\n"
    whole = AsciiDecoder(lead2=1).feed_leads(data)
    np.testing.assert_array_equal(whole, [[-145, 3], [0, 7], [12345, -1], [-25, np.nan]])
    for cut in range(len(data) + 1):
        dec = AsciiDecoder(lead2=1)
        got = np.concatenate([dec.feed_leads(data[:cut]), dec.feed_leads(data[cut:])])
        np.testing.assert_array_equal(got, whole)
        assert dec.lead2_missing == 1


def test_frames_second_lead_and_frames_without_it() -> None:
    dec = FrameDecoder(channel=1, lead2=0)
    two = np.array([[10, 20], [11, 21]], dtype=np.int16)
    one = np.array([[30], [31]], dtype=np.int16)
    frames = dec.feed(encode_frame(0, two) + encode_frame(1, np.array([[40, 50, 60]], dtype=np.int16)))
    assert [f.samples.tolist() for f in frames] == [[20, 21], [50]]
    assert [f.samples2.tolist() for f in frames] == [[10, 11], [40]]
    # lead2=2 of two-channel frames: the first lead whole, the second NaN, counted per sample.
    dec = FrameDecoder(channel=0, lead2=2)
    frames = dec.feed(encode_frame(0, two) + encode_frame(1, one))
    assert [f.samples.tolist() for f in frames] == [[10, 11], [30, 31]]
    assert all(np.isnan(f.samples2).all() for f in frames)
    assert (dec.bad_frames, dec.lead2_missing) == (0, 4)
    # The first lead's channel missing is still a bad frame, whatever the second.
    dec = FrameDecoder(channel=1, lead2=0)
    assert dec.feed(encode_frame(0, one)) == [] and (dec.bad_frames, dec.lead2_missing) == (1, 0)
    assert FrameDecoder().feed(encode_frame(0, two))[0].samples2 is None


def test_encode_frame_rejects_what_does_not_fit() -> None:
    for bad in (np.zeros(0, np.int16), np.zeros(256, np.int16), np.zeros((3, 17), np.int16),
                np.array([40000]), np.array([0.5])):
        with pytest.raises(ValueError):
            encode_frame(0, bad)


@pytest.mark.parametrize("seed", SEEDS)
def test_frames_random_bytes_never_raise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, 30000, dtype=np.uint8).tobytes()
    # Noise rich in sync bytes and plausible headers, to exercise every branch.
    syncy = rng.choice([0xA5, 0x5A, 0x10, 0x01, 0x02, 0x00, 0xFF], 30000).astype(np.uint8).tobytes()
    for blob in (noise, syncy):
        dec = FrameDecoder(channel=int(rng.integers(0, 2)))
        frames = [f for part in feed_pieces(dec, blob, rng, 512) for f in part]
        assert len(dec._buf) <= frame_size(255, 16)
        assert dec.frames <= 1 and len(frames) <= 1  # a random CRC match is possible, just unlikely


@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_streams_never_invent_frames(seed: int) -> None:
    """Insert, delete and flip bytes at random: every frame that comes out is an original one,
    and every frame left untouched comes out."""
    rng = np.random.default_rng(seed)
    frames = [encode_frame(i, rng.integers(-3000, 3000, 36).astype(np.int16)) for i in range(300)]
    originals = {f[3:5]: f for f in frames}  # by sequence bytes
    parts, intact = [], set()
    for i, f in enumerate(frames):
        op = rng.integers(0, 6)
        if op == 0:
            parts.append(rng.integers(0, 256, int(rng.integers(1, 50)), dtype=np.uint8).tobytes() + f)
            intact.add(i)
        elif op == 1:
            parts.append(f[: int(rng.integers(0, len(f)))])
        elif op == 2:
            b = bytearray(f)
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
            parts.append(bytes(b))
        else:
            parts.append(f)
            intact.add(i)
    dec = FrameDecoder()
    got = [fr for part in feed_pieces(dec, b"".join(parts), rng, 200) for fr in part]
    seqs = [g.seq for g in got]
    assert set(seqs) >= intact
    for g in got:
        orig = np.frombuffer(originals[g.seq.to_bytes(2, "little")][7:-2], "<i2")
        assert g.samples.tolist() == orig.tolist()
    # Gaps are counted between the first and the last frame that came through.
    assert dec.lost_frames == seqs[-1] - seqs[0] + 1 - len(got)
    assert dec.lost_samples == 36 * dec.lost_frames


def test_wire_units() -> None:
    mv = np.array([-1.5, 0.0, 0.0004, 0.0006, np.nan, np.inf], dtype=np.float32)
    units = to_wire(mv, 0.001, 100)
    assert units.tolist() == [-1400, 100, 100, 101, 100, 100]
    assert from_wire(units, 0.001, 100).dtype == np.float32
