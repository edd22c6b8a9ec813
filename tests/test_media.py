"""data_prep.media and ``--media``: images and WAV audio as the byte streams MEGABYTE models.

Fixtures are drawn here (Pillow gradients and shapes, numpy tones written with ``wave``).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_prep.bytes import PrepError, PrepOptions, prepare
from data_prep.media import (
    MediaError,
    MediaSpec,
    audio_to_bytes,
    bytes_to_pixels,
    image_to_bytes,
    load_rgb,
    mulaw_decode,
    mulaw_encode,
    pixels_to_bytes,
    read_wav,
)
from data_prep.shards import MANIFEST, iter_documents, read_manifest
from tests.conftest import ROOT
from tests.test_data_prep import ENV

IMG = MediaSpec("image", image_size=16, image_fit="crop", pixel_order="raster", channels=3)


def png_bytes(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A gradient with a rectangle and an ellipse, encoded as PNG."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (x + y + 37 * seed) % 256], axis=-1).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle([width // 5, height // 4, width // 2, height // 2], fill=(255, 20 * seed % 256, 0))
    draw.ellipse([width // 2, height // 3, width - 2, height - 2], outline=(0, 0, 255), width=2)
    buf = io.BytesIO()
    img.convert(mode).save(buf, "PNG")
    return buf.getvalue()


def wav_bytes(samples: np.ndarray, rate: int = 8000, width: int = 2) -> bytes:
    """A PCM WAV of ``samples`` (frames x channels, already in the integer range of ``width``)."""
    frames = samples.reshape(len(samples), -1)
    if width == 1:
        raw = (frames + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = frames.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = frames.astype(f"<i{width}").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(frames.shape[1])
        wf.setsampwidth(width)
        wf.setframerate(rate)
        wf.writeframes(raw)
    return buf.getvalue()


def tone(n: int, freq: float = 440.0, rate: int = 8000, amp: float = 20000.0) -> np.ndarray:
    return np.round(amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("order", ["raster", "blocks:2", "blocks:4"])
def test_pixel_order_inverts_on_a_cropped_non_square_image(order):
    pixels = load_rgb(png_bytes(100, 60), 32, "crop")
    data = pixels_to_bytes(pixels, order)
    assert len(data) == 32 * 32 * 3
    assert np.array_equal(bytes_to_pixels(data, 32, 32, order), pixels)
    assert data == image_to_bytes(png_bytes(100, 60), MediaSpec("image", 32, "crop", order, channels=3))


def test_block_order_is_the_documented_mapping():
    """blocks:B: blocks in raster order, pixels inside a block in raster order, RGB interleaved."""
    h, w, b = 8, 12, 2
    pixels = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3).astype(np.uint8)
    data = np.frombuffer(pixels_to_bytes(pixels, f"blocks:{b}"), np.uint8)
    n = w // b
    for y in range(h):
        for x in range(w):
            by, iy, bx, ix = y // b, y % b, x // b, x % b
            start = ((by * n + bx) * b * b + (iy * b + ix)) * 3
            assert list(data[start:start + 3]) == list(pixels[y, x])
    assert list(data[:12]) == list(pixels[0:2, 0:2].reshape(-1))  # one 12-byte patch = one 2x2 block
    assert list(data[12:24]) == list(pixels[0:2, 2:4].reshape(-1))  # the next block to the right
    assert pixels_to_bytes(pixels, "raster") == pixels.tobytes()


def test_fit_modes_give_the_size_and_crop_takes_the_centre():
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = 200  # the centre square is all 200, the sides 0
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    crop = load_rgb(buf.getvalue(), 20, "crop")
    # Only the centre is kept (bicubic rings a little at the edges of the square).
    assert crop.shape == (20, 20, 3) and np.abs(crop.astype(int) - 200).max() <= 16
    assert (crop[:, 2:-2] == 200).all()
    squash = load_rgb(buf.getvalue(), 20, "resize")
    assert squash.shape == (20, 20, 3) and squash[:, 0].max() == 0 and squash[:, 10].min() == 200
    pad = load_rgb(buf.getvalue(), 30, "pad")  # 120 x 40 -> 30 x 10, centred on black
    assert pad.shape == (30, 30, 3) and pad[:10].max() == 0 and pad[20:].max() == 0
    assert np.abs(pad[10:20, 12:18].astype(int) - 200).max() <= 16
    grey_alpha = load_rgb(png_bytes(30, 50, mode="LA"), 16)  # other modes become RGB
    assert grey_alpha.shape == (16, 16, 3)
    with pytest.raises(MediaError, match="does not divide"):
        MediaSpec("image", 64, "crop", "blocks:3", channels=3).check()


def test_unreadable_image_is_a_media_error():
    with pytest.raises(MediaError, match="not a readable image"):
        image_to_bytes(png_bytes(20, 20)[:60], IMG)  # truncated PNG


# ------------------------------------------------------------------ audio


def test_mulaw_round_trip_error_bound_and_pcm16_exact():
    x = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    codes = mulaw_encode(x)
    assert codes.dtype == np.uint8 and set(codes.tolist()) == set(range(256)) - {0x7F}  # all but -0
    err = np.abs(mulaw_decode(codes).astype(np.int64) - x.astype(np.int64))
    bound = 8 + np.abs(x.astype(np.int64)) / 32
    inside = np.abs(x.astype(np.int64)) <= 32124  # beyond the largest code, values are clipped
    assert (err[inside] <= bound[inside]).all() and err.max() <= 644
    assert mulaw_encode(np.array([0], np.int16))[0] == 0xFF  # G.711: silence is 0xFF
    decoded = mulaw_decode(np.arange(256, dtype=np.uint8))
    again = mulaw_encode(decoded)
    assert (again == np.arange(256)).sum() >= 255  # every code but -0 (0x7F -> +0 0xFF) is stable
    sig = tone(4000)
    spec = MediaSpec("audio", audio_format="pcm16")
    data, rate = audio_to_bytes(wav_bytes(sig), spec)
    assert rate == 8000 and np.array_equal(np.frombuffer(data, "<i2"), sig)


def test_mulaw_matches_audioop_where_it_exists():
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13; the reference here
    x = np.arange(-32768, 32768, dtype=np.int64).astype("<i2")
    assert mulaw_encode(x).tobytes() == audioop.lin2ulaw(x.tobytes(), 2)
    assert mulaw_decode(np.arange(256, dtype=np.uint8)).astype("<i2").tobytes() == \
        audioop.ulaw2lin(bytes(range(256)), 2)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_widths_and_channels_become_mono_int16(width):
    sig = tone(500).astype(np.int64)
    stereo = np.stack([sig, sig // 2], axis=1)
    scaled = {1: stereo >> 8, 2: stereo, 3: stereo << 8, 4: stereo << 16}[width]
    samples, rate = read_wav(wav_bytes(scaled, rate=16000, width=width))
    back = scaled >> (8 * (width - 2)) if width > 2 else (scaled << 8 if width == 1 else scaled)
    assert rate == 16000 and samples.dtype == np.int16
    assert np.array_equal(samples, (back[:, 0] + back[:, 1]) // 2)


def test_bad_wav_and_rate_mismatch_are_media_errors():
    with pytest.raises(MediaError, match="not a readable PCM WAV"):
        read_wav(b"RIFF....WAVEjunk")
    with pytest.raises(MediaError, match="sample rate 8000 Hz, expected 16000"):
        audio_to_bytes(wav_bytes(tone(100)), MediaSpec("audio", audio_format="mulaw8", sample_rate=16000))


# ------------------------------------------------------------------ data_prep.bytes


def run_bytes(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_prep.bytes", *args, "--workers", "2", "--no-progress",
           "--val-fraction", "0.3"]
    return subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, check=check, timeout=300)


def documents(out: Path) -> dict:
    return {k: v for s in ("train", "val", "test") for k, v in iter_documents(out, s)}


def test_folder_of_pngs_becomes_rgb_documents_with_the_spec_in_the_manifest(tmp_path):
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    files = {f"img{i}.png": png_bytes(40 + 7 * i, 30 + 11 * i, seed=i) for i in range(6)}
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(50, 50, seed=9))).save(jpeg, "JPEG")
    files["sub/photo.JPG"] = jpeg.getvalue()  # a JPEG; extension case does not matter
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    r = run_bytes(str(src), "--output", str(out), "--image-size", "16", "--pixel-order", "blocks:2")
    result = json.loads(r.stdout)
    assert result["status"] == "written" and result["media"]["kind"] == "image"
    spec = MediaSpec("image", 16, "crop", "blocks:2", channels=3)
    docs = documents(out)
    assert docs == {name: image_to_bytes(data, spec) for name, data in files.items()}
    manifest = read_manifest(out)
    assert manifest["media"]["kind"] == "image" and manifest["media"]["pixel_order"] == "blocks:2"
    assert manifest["media"]["bytes_per_image"] == 768 and manifest["options"]["image_size"] == 16
    from pretrain.data.shard_loader import open_dataset
    assert open_dataset(out).kind == "bytes"  # what it wrote is what training reads
    # The same options again: a no-op; other media options: written again, never reused.
    assert json.loads(run_bytes(str(src), "--output", str(out), "--image-size", "16", "--pixel-order",
                                "blocks:2").stdout)["status"] == "unchanged"
    raster = json.loads(run_bytes(str(src), "--output", str(out), "--image-size", "16").stdout)
    assert raster["status"] == "written"
    assert documents(out)["img3.png"] == image_to_bytes(files["img3.png"], IMG)
    # --media none stores the PNG files' own bytes.
    raw = json.loads(run_bytes(str(src), "--output", str(out), "--media", "none").stdout)
    assert raw["status"] == "written" and raw["media"] is None and documents(out) == files


def test_folder_of_wavs_becomes_mulaw_or_pcm16_documents(tmp_path):
    src = tmp_path / "wavs"
    src.mkdir()
    sigs = {f"t{i}.wav": tone(3000 + 500 * i, freq=200.0 * (i + 1)) for i in range(4)}
    for name, sig in sigs.items():
        (src / name).write_bytes(wav_bytes(sig))
    out = tmp_path / "mu"
    result = json.loads(run_bytes(str(src), "--output", str(out), "--max-sample-bytes", "2K").stdout)
    assert result["media"] == read_manifest(out)["media"]
    assert result["media"]["audio_format"] == "mulaw8" and result["media"]["sample_rate"] == 8000
    assert documents(out) == {k: mulaw_encode(v).tobytes() for k, v in sigs.items()}  # chunks rebuilt
    out16 = tmp_path / "pcm"
    run_bytes(str(src), "--output", str(out16), "--audio-format", "pcm16")
    assert documents(out16) == {k: v.astype("<i2").tobytes() for k, v in sigs.items()}
    assert read_manifest(out16)["media"]["bytes_per_sample"] == 2
    # A file at another rate: a one-line error naming it, or skipped and counted.
    (src / "t9.wav").write_bytes(wav_bytes(tone(800), rate=16000))
    r = run_bytes(str(src), "--output", str(tmp_path / "bad"), "--audio-sample-rate", "8000", check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "t9.wav: sample rate 16000 Hz, expected 8000 Hz" in r.stderr and "--skip bad_audio" in r.stderr
    r = run_bytes(str(src), "--output", str(tmp_path / "bad"), "--order", "sorted", "--skip", "bad_audio")
    assert json.loads(r.stdout)["bad_input"]["bad_audio"] == 1  # t0..t3 at 8 kHz set the rate


def test_auto_mode_refuses_a_mix_naming_one_file_of_each_kind(tmp_path):
    src = tmp_path / "mix"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(8, 8))
    (src / "b.wav").write_bytes(wav_bytes(tone(64)))
    (src / "c.txt").write_bytes(b"text\n")
    r = run_bytes(str(src), "--output", str(tmp_path / "o"), check=False)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.strip().count("\n") == 0
    for name in ("images (", "a.png", "audio (", "b.wav", "other files (", "c.txt", "--media none"):
        assert name in r.stderr, r.stderr
    assert not (tmp_path / "o" / MANIFEST).exists()
    r = run_bytes(str(src), "--output", str(tmp_path / "o"), "--media", "none")
    assert json.loads(r.stdout)["media"] is None


def test_corrupt_png_is_one_line_naming_the_file_or_skipped_and_counted(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    good = png_bytes(30, 20)
    (src / "good.png").write_bytes(good)
    (src / "broken.png").write_bytes(good[: len(good) // 2])
    r = run_bytes(str(src), "--output", str(tmp_path / "o"), "--image-size", "16", check=False)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.strip().count("\n") == 0
    assert "broken.png: not a readable image" in r.stderr and "--skip bad_image" in r.stderr
    r = run_bytes(str(src), "--output", str(tmp_path / "o"), "--image-size", "16", "--skip", "bad_image")
    assert json.loads(r.stdout)["bad_input"]["bad_image"] == 1
    manifest = read_manifest(tmp_path / "o")
    assert "broken.png: not a readable image" in manifest["bad_input"]["examples"][0]
    assert documents(tmp_path / "o") == {"good.png": image_to_bytes(good, IMG)}


def test_media_options_are_checked_and_text_fingerprints_ignore_them(tmp_path):
    with pytest.raises(PrepError, match="block size 3 does not divide --image-size 64"):
        PrepOptions(pixel_order="blocks:3").check()
    r = run_bytes("x", "--output", str(tmp_path / "o"), "--pixel-order", "zigzag", check=False)
    assert r.returncode == 2 and "--pixel-order must be 'raster' or 'blocks:B'" in r.stderr
    src = tmp_path / "txt"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\n")
    first = prepare([src], tmp_path / "t", PrepOptions(), progress=False)
    assert first["media"] is None
    again = prepare([src], tmp_path / "t", PrepOptions(image_size=32, audio_format="pcm16"), progress=False)
    assert again["status"] == "unchanged"  # media options change nothing for text


def test_media_presets_load_and_match_the_byte_layout(byte_dataset):
    from pretrain.config import CONFIG_DIR, load_config

    data = [f"data.datasets=[{byte_dataset}]"]  # the presets train on shards they name
    img = load_config(CONFIG_DIR / "imagenet64_megabyte.yaml", data).model
    spec = PrepOptions(pixel_order="blocks:2").media_spec("image")
    assert img.seq_len == spec.bytes_per_item() == 64 * 64 * 3
    assert img.patch_size == 3 * 2 * 2  # one blocks:2 block per patch
    audio = load_config(CONFIG_DIR / "audio_megabyte.yaml", data).model
    assert (audio.seq_len, audio.patch_size) == (65536, 32)


def test_a_16_bit_greyscale_png_is_scaled_not_clipped():
    """Pillow's RGB conversion clips 16-bit values at 255: a gradient came out 99.6% white."""
    import io

    from PIL import Image

    from data_prep.media import load_rgb

    grad = (np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520
    buf = io.BytesIO()
    Image.fromarray(grad).save(buf, format="PNG")
    pixels = load_rgb(buf.getvalue(), 64, "crop")
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey
    expected = np.rint(grad / 65535 * 255)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1
    assert (pixels == 255).mean() < 0.01 and len(np.unique(pixels)) > 200


def test_doc_bytes_with_converted_media_is_refused(tmp_path):
    """--doc-bytes only cuts raw files: with media it was recorded in the manifest and ignored."""
    src = tmp_path / "wavs"
    src.mkdir()
    for i in range(3):
        (src / f"c{i}.wav").write_bytes(wav_bytes(tone(4000)))
    with pytest.raises(PrepError, match="--doc-bytes cuts raw files into documents; audio files"):
        prepare([src], tmp_path / "out", PrepOptions(doc_bytes=1024), progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()
    prepare([src], tmp_path / "raw", PrepOptions(doc_bytes=1024, media="none", val_fraction=0.0),
            progress=False)  # the files' own bytes: cut as asked
