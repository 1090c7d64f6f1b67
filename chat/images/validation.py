"""Uploaded images, checked with Pillow and re-encoded before anything is stored: only our encoder's bytes are kept."""
from __future__ import annotations

import hashlib
import logging
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO

from django.utils.translation import gettext as _
from PIL import Image, ImageFile, ImageOps, features

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without Little CMS: colours stay as decoded
    ImageCms = None  # type: ignore[assignment]

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")) if ImageCms is not None else None
logger = logging.getLogger(__name__)

# Passed to Image.open so that no other decoder is ever tried: never SVG, PSD, ICO, TIFF, or EPS (Ghostscript).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Decoded format -> (Pillow encoder, MIME type, extension) of the stored copy. GIF keeps only its first frame, stored
# as PNG: a one-frame GIF has nothing PNG lacks, and we never re-encode animations. MPO is how Pillow names a JPEG
# with extra pictures (some phone cameras); we keep the first, as a plain JPEG.
OUTPUTS = {
    "PNG": ("PNG", "image/png", "png"),
    "JPEG": ("JPEG", "image/jpeg", "jpg"),
    "MPO": ("JPEG", "image/jpeg", "jpg"),
    "WEBP": ("WEBP", "image/webp", "webp"),
    "GIF": ("PNG", "image/png", "png"),
}
SAVE_OPTIONS = {"PNG": {"optimize": False}, "JPEG": {"quality": 90}, "WEBP": {"quality": 90}}
THUMBNAIL_QUALITY = 80
# What a damaged file makes Pillow raise while it decodes (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError)
# Pillow walks a file's container structure in Python, a few microseconds a step: 10 MB of empty PNG chunks, JPEG fill
# bytes or GIF comment blocks cost 10 to 60 s of CPU to open. Steps are counted first, in one cheap pass, and a file
# with far more of them than real images have is refused. A 10 MB PNG in libpng's 8 KB IDAT chunks has 1,280 chunks;
# a camera's JPEG has a few dozen markers before its first scan; a 10 MB GIF in full 255-byte sub-blocks has 41,000.
MAX_PNG_CHUNKS = 10_000
MAX_JPEG_HEADER_STEPS = 10_000
MAX_GIF_STEPS = 100_000


class ImageRejected(ValueError):
    """An upload we will not store: `code` for programs, `message` for the person who sent it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # width × height of the decoded image
    max_side: int = 12_000
    max_frames: int = 100  # animations with more frames are refused, even though only the first is kept
    thumbnail_side: int = 384


@dataclass(frozen=True)
class ValidatedImage:
    data: bytes  # re-encoded: no EXIF, XMP, comments or ICC profile; EXIF orientation applied; sRGB
    mime: str  # of `data`, from the decoded image; a GIF becomes image/png
    extension: str
    width: int
    height: int
    sha256: str  # hex digest of `data`
    thumbnail: bytes  # longest side <= ImageLimits.thumbnail_side
    thumbnail_mime: str


def validate_image(raw: bytes, limits: ImageLimits = ImageLimits()) -> ValidatedImage:
    """The image in `raw`, checked and re-encoded, or ImageRejected saying why not.

    There is deliberately no file name or client Content-Type parameter: the type is what Pillow decodes, nothing else.
    """
    if not raw:
        raise ImageRejected("empty_file", _("The file is empty."))
    if len(raw) > limits.max_bytes:
        raise ImageRejected(
            "too_large",
            _("The file is %(size)s; images can be at most %(limit)s.")
            % {"size": _size_text(len(raw)), "limit": _size_text(limits.max_bytes)},
        )
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide switch someone else flipped: with it, half a file would pass as a whole image. Setting it back
        # here would change it for every other thread, so fail loudly instead.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; images cannot be validated.")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; here it refuses, without touching the global.
            # (catch_warnings is not thread-safe before Python 3.14: threads racing here may restore each other's
            # warning filters. Only how warnings are shown is at stake; the pixel limits below do not rely on it.)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _validate(raw, limits)
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb(limits) from error
    except DECODE_ERRORS as error:
        raise _corrupt() from error
    except Exception as error:
        # Not a known way for a file to be broken: keep a trace, in case the bug is ours rather than the file's.
        logger.warning("Unexpected error while validating an image", exc_info=True)
        raise _corrupt() from error


def declared_size(raw: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) from the header of a PNG, JPEG, WebP or GIF, read without decoding a pixel: what budgets
    count before any image is decoded (a 5 KB PNG may declare 6000 × 6000). ImageRejected with the code and words
    validate_image would use (empty_file, too_large, not_an_image, corrupt_image, too_many_pixels). Pillow opens
    lazily: nothing past the header is read, and the per-image pixel and side limits hold here already."""
    if not raw or len(raw) > limits.max_bytes:
        validate_image(raw, limits)  # refuses it before decoding anything, in validation's own words
    if _has_too_many_steps(raw):  # the header walk itself would cost seconds (see MAX_PNG_CHUNKS)
        raise _corrupt()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(raw) as image:
                size = image.size
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb(limits) from error
    except DECODE_ERRORS as error:
        raise _corrupt() from error
    _check_pixels(size, limits)
    return size


def _bomb(limits: ImageLimits) -> ImageRejected:
    return ImageRejected(
        "too_many_pixels",
        _("The image has too many pixels to open safely; the limit is %(limit)s pixels.")
        % {"limit": f"{limits.max_pixels:,}"},
    )


def _validate(raw: bytes, limits: ImageLimits) -> ValidatedImage:
    if _has_too_many_steps(raw):
        raise _corrupt()
    with _open(raw) as probe:
        # Only the header has been read: sizes and frame counts are checked before a single pixel is decoded.
        _check_pixels(probe.size, limits)
        if _has_more_frames_than(probe, limits.max_frames):
            raise ImageRejected(
                "too_many_frames",
                _("The animation has more than %(limit)s frames; the limit is %(limit)s.")
                % {"limit": f"{limits.max_frames:,}"},
            )
    with _open(raw) as probe:
        probe.verify()  # chunk checksums, for PNG; it leaves the instance unusable, hence a fresh open below
    with _open(raw) as decoded:
        decoded.seek(0)
        decoded.load()
        _check_pixels(decoded.size, limits)
        encoder, mime, extension = OUTPUTS[decoded.format or ""]
        icc_profile = decoded.info.get("icc_profile")
        image = _upright(decoded)
    image = _to_8_bits(image)
    image = _to_srgb(image, icc_profile)
    image = _for_encoder(image, encoder)
    image.info = {}  # encoders copy some keys from here (a JPEG's comment, a PNG's ICC profile): start from nothing
    data = _encode(image, encoder, **SAVE_OPTIONS[encoder])
    thumbnail, thumbnail_mime = _thumbnail(image, limits.thumbnail_side)
    return ValidatedImage(
        data=data, mime=mime, extension=extension, width=image.width, height=image.height,
        sha256=hashlib.sha256(data).hexdigest(), thumbnail=thumbnail, thumbnail_mime=thumbnail_mime,
    )


def _open(raw: bytes) -> ImageFile.ImageFile:
    try:
        return Image.open(BytesIO(raw), formats=list(ACCEPTED_FORMATS))
    except Image.UnidentifiedImageError as error:
        raise ImageRejected("not_an_image", _("The file is not a PNG, JPEG, WebP or GIF image.")) from error


def _has_too_many_steps(raw: bytes) -> bool:
    """More chunks, markers or blocks than Pillow should walk (see MAX_PNG_CHUNKS); the prefixes are Pillow's own."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_chunks(raw, MAX_PNG_CHUNKS + 1) > MAX_PNG_CHUNKS
    if raw.startswith(b"\xff\xd8\xff"):
        return _jpeg_header_steps(raw, MAX_JPEG_HEADER_STEPS + 1) > MAX_JPEG_HEADER_STEPS
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_steps(raw, MAX_GIF_STEPS + 1) > MAX_GIF_STEPS
    return False


def _png_chunks(raw: bytes, stop: int) -> int:
    position, count = 8, 0
    while position + 8 <= len(raw) and count < stop:
        count += 1
        if raw[position + 4:position + 8] == b"IEND":
            break
        position += 12 + int.from_bytes(raw[position:position + 4], "big")
    return count


def _jpeg_header_steps(raw: bytes, stop: int) -> int:
    """Segments, fill bytes and stray bytes up to the first scan, the part Pillow reads byte by byte."""
    position, steps = 2, 0
    while position + 1 < len(raw) and steps < stop:
        steps += 1
        marker = raw[position + 1]
        if raw[position] != 0xFF or marker in (0x00, 0xFF):  # a stray byte, an escaped 0xFF, or fill
            position += 1
        elif marker == 0xDA:  # start of scan: libjpeg, in C, reads the rest
            break
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            position += 2
        else:
            position += 2 + int.from_bytes(raw[position + 2:position + 4], "big")
    return steps


def _gif_steps(raw: bytes, stop: int) -> int:
    """Blocks, sub-blocks and stray bytes, all of which Pillow reads in Python (it skips a stray byte at a time)."""

    def colour_table(flags: int) -> int:
        return 3 << ((flags & 7) + 1) if flags & 0x80 else 0

    position, steps = 13 + colour_table(raw[10] if len(raw) > 10 else 0), 0
    while position < len(raw) and steps < stop:
        steps += 1
        kind = raw[position]
        if kind == 0x3B:  # the trailer
            break
        if kind == 0x21:  # an extension: its label, then sub-blocks
            position += 2
        elif kind == 0x2C:  # an image: its descriptor, local colour table and LZW code size, then sub-blocks
            flags = raw[position + 9] if position + 9 < len(raw) else 0
            position += 11 + colour_table(flags)
        else:
            position += 1
            continue
        while position < len(raw) and steps < stop:
            steps += 1
            size = raw[position]
            position += 1 + size
            if size == 0:
                break
    return steps


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    numbers = {"width": f"{width:,}", "height": f"{height:,}"}
    if width < 1 or height < 1:
        raise _corrupt()
    if width > limits.max_side or height > limits.max_side:
        raise ImageRejected(
            "too_many_pixels",
            _("The image is %(width)s × %(height)s pixels; the limit is %(limit)s pixels on a side.")
            % {**numbers, "limit": f"{limits.max_side:,}"},
        )
    if width * height > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            _("The image is %(width)s × %(height)s = %(pixels)s pixels; the limit is %(limit)s pixels.")
            % {**numbers, "pixels": f"{width * height:,}", "limit": f"{limits.max_pixels:,}"},
        )


def _has_more_frames_than(image: ImageFile.ImageFile, limit: int) -> bool:
    if image.format == "GIF":
        # GIF's n_frames walks every frame in the file (2 s for 10 MB of one-pixel frames); stop one past the limit.
        # Pillow's own n_frames uses this private step, which reads frame headers without decoding any pixels.
        try:
            for frame in range(1, limit + 1):
                image._seek(frame, False)  # type: ignore[attr-defined]
        except EOFError:
            return False
        return True
    # WebP and APNG state their frame count in the header (WebP's demuxer counts in C).
    return getattr(image, "n_frames", 1) > limit


def _upright(image: Image.Image) -> Image.Image:
    """A copy turned the way the camera's EXIF Orientation says; an unreadable EXIF block only costs the turn."""
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception:
        # Broken EXIF is common in real photos and the block is dropped anyway: keep the picture, unturned.
        logger.info("Could not read an image's EXIF orientation", exc_info=True)
        return image.copy()


def _to_8_bits(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        # Pillow's convert("L") clips 16-bit values at 255 instead of scaling them: nearly everything would be white.
        return image.point(lambda value: value / 257 + 0.5).convert("L")
    return image


def _to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """The colours as sRGB, so the embedded profile can be dropped.

    The profile is not personal data, but it is an arbitrary blob every viewer's colour engine would parse, and once
    a CMYK image is made RGB it no longer describes the pixels. Converting keeps wide-gamut phone photos (Display P3)
    and print CMYK looking right; a profile Little CMS cannot use leaves the pixels as Pillow decoded them.
    """
    if not icc_profile or ImageCms is None or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc_profile))
        return ImageCms.profileToProfile(
            image, source, _SRGB, outputMode="RGBA" if image.mode == "RGBA" else "RGB"
        ) or image
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image


def _for_encoder(image: Image.Image, encoder: str) -> Image.Image:
    """A mode the encoder writes faithfully; transparency always becomes an alpha channel, palettes are expanded."""
    alpha = image.has_transparency_data
    if encoder == "JPEG":
        mode = "RGB"
    elif encoder == "PNG" and image.mode in ("1", "L", "LA", "RGB", "RGBA") and (not alpha or "A" in image.mode):
        mode = image.mode
    elif encoder == "PNG" and image.mode in ("1", "L"):
        mode = "LA" if alpha else "L"
    else:
        mode = "RGBA" if alpha else "RGB"
    # convert() returns a new image even for the same mode, so clearing its info later touches nothing shared.
    return image.convert(mode)


def _encode(image: Image.Image, encoder: str, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=encoder, **options)
    return buffer.getvalue()


def _thumbnail(image: Image.Image, side: int) -> tuple[bytes, str]:
    alpha = image.has_transparency_data
    thumbnail = image.convert("RGBA" if alpha else "RGB")
    thumbnail.thumbnail((side, side))
    thumbnail.info = {}
    if features.check("webp"):
        return _encode(thumbnail, "WEBP", quality=THUMBNAIL_QUALITY), "image/webp"
    if alpha:  # JPEG has no alpha: transparent parts go white, as the chat's light background would show them
        thumbnail = Image.alpha_composite(Image.new("RGBA", thumbnail.size, "white"), thumbnail).convert("RGB")
    return _encode(thumbnail, "JPEG", quality=THUMBNAIL_QUALITY), "image/jpeg"


def _corrupt() -> ImageRejected:
    return ImageRejected("corrupt_image", _("The image is damaged or truncated."))


def _size_text(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.1f} KB"
    return _("%(size)s bytes") % {"size": f"{size:,}"}
