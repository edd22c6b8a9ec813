"""Images and audio as the byte streams the MEGABYTE paper models (pure functions, no I/O state).

**Images** (PNG, JPEG, anything Pillow opens) become ``S x S x 3`` raw RGB bytes, one byte per
colour channel of a pixel (so bits per byte are bits per dimension, the paper's ImageNet metric;
``S=64`` gives the paper's 12,288 bytes per image). The image is opened, rotated by its EXIF
orientation, converted to RGB (alpha dropped, grey and palettes expanded) and fitted to ``S x S``:

* ``crop`` (default): the centred square of side min(W, H) is resized to ``S x S`` (the same as
  resizing the shorter side to ``S`` and centre-cropping, without a rounding step);
* ``resize``: the whole image is squashed to ``S x S`` (aspect ratio not kept);
* ``pad``: the longer side is resized to ``S`` and the image is centred on black.

Resampling is bicubic (antialiased when shrinking). The pixel order of the bytes is

* ``raster``: ``byte[(y*W + x)*3 + c]`` = channel ``c`` (R, G, B) of pixel (row ``y``, column ``x``);
* ``blocks:B``: the image is cut into ``B x B`` blocks; blocks in raster order, pixels inside a
  block in raster order, RGB interleaved: with ``n = W // B`` blocks per row,
  ``byte[((by*n + bx)*B*B + (iy*B + ix))*3 + c]`` = channel ``c`` of pixel
  ``(y, x) = (by*B + iy, bx*B + ix)``. A block is ``3*B*B`` bytes (12 for ``B=2``), so a MEGABYTE
  patch of that size holds exactly one square of pixels. :func:`bytes_to_pixels` inverts both.

**Audio** (WAV, read with the standard library's ``wave``: PCM of 8, 16, 24 or 32 bits, any
channel count) becomes mono samples: channels are averaged (integer mean, rounded down) and
every sample is first brought to signed 16 bits (8-bit WAV is unsigned: ``(v - 128) << 8``;
24 and 32 bits keep their top 16 bits, rounding down). No resampling: the sample rate is
recorded, and files must share one rate. Formats: ``pcm16`` (little-endian signed 16-bit, two
bytes per sample, exact) or ``mulaw8`` (ITU-T G.711 mu-law, one byte per sample: the standard
segmented 8-bit code on 14-bit magnitudes, bits inverted, exactly what ``audioop.lin2ulaw``
wrote; a decoded sample is within 8 + |x|/32 of ``x``, i.e. about 1/32 of the amplitude).

:class:`MediaSpec` says what the bytes are; ``data_prep.bytes`` records it in the manifest.
"""

from __future__ import annotations

import io
import wave
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
AUDIO_EXTENSIONS = (".wav",)
IMAGE_FITS = ("crop", "resize", "pad")
AUDIO_FORMATS = ("mulaw8", "pcm16")


class MediaError(ValueError):
    """A file is not a readable image / WAV, or does not fit the requested spec (one line)."""


@dataclass(frozen=True)
class MediaSpec:
    """What the bytes of a media dataset are (recorded in the manifest under ``"media"``).

    ``kind`` 'image': ``image_size`` x ``image_size`` x 3 RGB bytes, fitted by ``image_fit``, in
    ``pixel_order`` ('raster' or 'blocks:B'). ``kind`` 'audio': mono samples in ``audio_format``
    ('mulaw8' or 'pcm16') at ``sample_rate`` Hz (None in the options = taken from the files, all
    equal). ``channels`` is the channel count of the stored bytes (3 for RGB, 1 for audio).
    """

    kind: str
    image_size: Optional[int] = None
    image_fit: Optional[str] = None
    pixel_order: Optional[str] = None
    audio_format: Optional[str] = None
    sample_rate: Optional[int] = None
    channels: int = 1

    def check(self) -> None:
        """Raise :class:`MediaError` on an impossible spec."""
        if self.kind == "image":
            if not self.image_size or self.image_size <= 0:
                raise MediaError(f"--image-size must be positive, got {self.image_size}")
            if self.image_fit not in IMAGE_FITS:
                raise MediaError(f"--image-fit must be one of {', '.join(IMAGE_FITS)}, "
                                 f"got {self.image_fit!r}")
            block = parse_pixel_order(str(self.pixel_order))
            if self.image_size % block:
                raise MediaError(f"--pixel-order {self.pixel_order}: block size {block} does not divide "
                                 f"--image-size {self.image_size}")
        elif self.kind == "audio":
            if self.audio_format not in AUDIO_FORMATS:
                raise MediaError(f"--audio-format must be one of {', '.join(AUDIO_FORMATS)}, "
                                 f"got {self.audio_format!r}")
            if self.sample_rate is not None and self.sample_rate <= 0:
                raise MediaError(f"--audio-sample-rate must be positive, got {self.sample_rate}")
        else:
            raise MediaError(f"media kind must be 'image' or 'audio', got {self.kind!r}")

    def bytes_per_item(self) -> Optional[int]:
        """Bytes of one image (None for audio, whose length varies)."""
        return self.image_size * self.image_size * 3 if self.kind == "image" and self.image_size else None

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        if self.kind == "image":
            out["bytes_per_image"] = self.bytes_per_item()
            out["note"] = "one byte per RGB channel of a pixel: bits per byte = bits per dimension"
        else:
            out["bytes_per_sample"] = 1 if self.audio_format == "mulaw8" else 2
        return out


def media_kind_of(name: str) -> Optional[str]:
    """'image' or 'audio' by file extension (case-insensitive), else None."""
    low = name.lower()
    if low.endswith(IMAGE_EXTENSIONS):
        return "image"
    if low.endswith(AUDIO_EXTENSIONS):
        return "audio"
    return None


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def parse_pixel_order(order: str) -> int:
    """'raster' -> 1, 'blocks:B' -> B (B >= 1); anything else raises :class:`MediaError`."""
    if order == "raster":
        return 1
    if order.startswith("blocks:"):
        try:
            block = int(order.split(":", 1)[1])
        except ValueError:
            block = 0
        if block >= 1:
            return block
    raise MediaError(f"--pixel-order must be 'raster' or 'blocks:B' with an integer B >= 1, got {order!r}")


def _eight_bit(img: Any) -> Any:
    """16- and 32-bit integer greyscale (``I;16*``, ``I``) scaled to 8 bits: Pillow's RGB
    conversion clips those values to 255 instead (a 16-bit PNG came out nearly all white)."""
    from PIL import Image

    if not img.mode.startswith("I"):
        return img
    values = np.asarray(img, dtype=np.float64)  # decoded, whatever the byte order
    top = 65535.0 if img.mode.startswith("I;16") or values.max() <= 65535 else 2.0 ** 32 - 1
    return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def load_rgb(data: bytes, size: int, fit: str = "crop") -> np.ndarray:
    """Decode image file bytes and fit them to a ``(size, size, 3)`` uint8 RGB array (see module doc)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            img = _eight_bit(img).convert("RGB")  # decodes the whole file: truncation shows here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise MediaError(f"not a readable image: {err}") from None
    w, h = img.size
    bicubic = Image.Resampling.BICUBIC
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        img = img.resize((size, size), bicubic, box=(left, top, left + side, top + side))
    elif fit == "resize":
        img = img.resize((size, size), bicubic)
    elif fit == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(img.resize((nw, nh), bicubic), ((size - nw) // 2, (size - nh) // 2))
        img = canvas
    else:
        raise MediaError(f"image fit must be one of {', '.join(IMAGE_FITS)}, got {fit!r}")
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)


def pixels_to_bytes(pixels: np.ndarray, order: str = "raster") -> bytes:
    """An ``(H, W, 3)`` uint8 array as bytes in ``order`` ('raster' or 'blocks:B'; B divides H, W)."""
    h, w, c = pixels.shape
    block = parse_pixel_order(order)
    if h % block or w % block:
        raise MediaError(f"block size {block} does not divide the image ({w} x {h})")
    # (H, W, C) -> (H/B, B, W/B, B, C) -> (H/B, W/B, B, B, C): block row, block column, in-block y, x
    blocks = pixels.reshape(h // block, block, w // block, block, c).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(blocks, dtype=np.uint8).tobytes()


def bytes_to_pixels(data: bytes, height: int, width: int, order: str = "raster") -> np.ndarray:
    """Inverse of :func:`pixels_to_bytes`: ``(height, width, 3)`` uint8 array."""
    block = parse_pixel_order(order)
    if len(data) != height * width * 3 or height % block or width % block:
        raise MediaError(f"{len(data)} bytes are not a {width} x {height} RGB image in blocks of {block}")
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(height // block, width // block, block, block, 3)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(height, width, 3).copy()


def image_to_bytes(data: bytes, spec: MediaSpec) -> bytes:
    """Image file bytes -> the document bytes ``spec`` describes."""
    assert spec.image_size is not None and spec.image_fit is not None and spec.pixel_order is not None
    return pixels_to_bytes(load_rgb(data, spec.image_size, spec.image_fit), spec.pixel_order)


# --------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------


def read_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """WAV file bytes -> (mono int16 samples, sample rate). See the module doc for the conversion."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wf:
            channels, width, rate = wf.getnchannels(), wf.getsampwidth(), wf.getframerate()
            frames = wf.getnframes()
            raw = wf.readframes(frames)
    except (wave.Error, EOFError, OSError, ValueError) as err:
        raise MediaError(f"not a readable PCM WAV file: {err}") from None
    if width not in (1, 2, 3, 4) or channels < 1:
        raise MediaError(f"unsupported WAV: {width * 8}-bit samples, {channels} channels")
    if len(raw) != frames * channels * width:
        raise MediaError(f"truncated WAV: {len(raw)} bytes of sample data, header says "
                         f"{frames * channels * width}")
    if width == 1:  # unsigned 8-bit
        v = (np.frombuffer(raw, np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        v = np.frombuffer(raw, "<i2").astype(np.int32)
    elif width == 3:  # little-endian 24-bit: keep the top two bytes (signed)
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = (b[:, 2].astype(np.int8).astype(np.int32) << 8) | b[:, 1].astype(np.int32)
    else:
        v = np.frombuffer(raw, "<i4").astype(np.int32) >> 16
    mono = v.reshape(-1, channels).sum(axis=1, dtype=np.int64) // channels
    return mono.astype(np.int16), rate


# G.711 mu-law works on 14-bit magnitudes: bias 33, clipped at 8159, 8 segments of 16 steps.
_MULAW_BIAS, _MULAW_CLIP = 0x84, 8159


def mulaw_encode(samples: np.ndarray) -> np.ndarray:
    """Signed 16-bit samples -> G.711 mu-law bytes (uint8), exactly as ``audioop.lin2ulaw(x, 2)``."""
    x = samples.astype(np.int32) >> 2  # 14-bit, rounded down (as the standard's reference code)
    sign = np.where(x < 0, 0x80, 0).astype(np.int32)
    mag = np.minimum(np.minimum(np.abs(x), _MULAW_CLIP) + (_MULAW_BIAS >> 2), 0x1FFF)  # [33, 8191]
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 5  # segment 0..7 (mag >= 32)
    mantissa = (mag >> (exponent + 1)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes -> signed 16-bit samples (the centre of each code's interval)."""
    u = (~codes.astype(np.int32)) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    mag = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def audio_to_bytes(data: bytes, spec: MediaSpec) -> Tuple[bytes, int]:
    """WAV file bytes -> (the document bytes ``spec`` describes, the file's sample rate).

    A file whose rate differs from ``spec.sample_rate`` (when given) raises :class:`MediaError`.
    """
    samples, rate = read_wav(data)
    if spec.sample_rate is not None and rate != spec.sample_rate:
        raise MediaError(f"sample rate {rate} Hz, expected {spec.sample_rate} Hz (no resampling is done)")
    if samples.size == 0:
        raise MediaError("WAV file holds no samples")
    if spec.audio_format == "pcm16":
        return samples.astype("<i2").tobytes(), rate
    if spec.audio_format == "mulaw8":
        return mulaw_encode(samples).tobytes(), rate
    raise MediaError(f"audio format must be one of {', '.join(AUDIO_FORMATS)}, got {spec.audio_format!r}")
