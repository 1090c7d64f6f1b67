"""Uploaded images: only PNG, JPEG, WebP and GIF, checked before decoding, re-encoded without metadata."""
from __future__ import annotations

import hashlib
import inspect
import random
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Callable
from io import BytesIO

import pytest
from PIL import ExifTags, Image, ImageFile

from chat.images import validation as images
from chat.images.validation import ImageLimits, ImageRejected, ValidatedImage, validate_image

DEFAULT_LIMITS = ImageLimits()
SCRIPT = b"<html><body><script>alert(document.cookie)</script></body></html>"


# Fixtures, all made here in memory: no binary files in the repository.


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Incompressible pixels, so that a file cut in half loses half of its image data, not just its end."""
    rng = random.Random(1)
    return Image.frombytes(mode, size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * len(mode))))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG that claims any size: valid IHDR and CRCs, an empty IDAT, a few dozen bytes in all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b""))
            + png_chunk(b"IEND", b""))


def animated_gif(frames: int, colours: list[int] | None = None) -> bytes:
    colours = colours or [index % 2 for index in range(frames)]
    images_ = [Image.new("P", (2, 2), colour) for colour in colours]
    for image in images_:
        image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])
    return encode(images_[0], "GIF", save_all=True, append_images=images_[1:], duration=10)


def zip_file() -> bytes:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("evil.html", SCRIPT)
    return buffer.getvalue()


def svg_with_script() -> bytes:
    return (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<script>alert(document.cookie)</script><rect width="10" height="10"/></svg>')


def linear_rgb_profile() -> bytes:
    """An ICC v2 RGB profile with sRGB's primaries but gamma 1.0, which makes mid-grey a much lighter sRGB grey."""

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(struct.pack(">i", round(v * 65536)) for v in (x, y, z))

    gamma_one = b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100) + bytes(2)
    tags = [(b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
            (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)), (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
            (b"rTRC", gamma_one), (b"gTRC", gamma_one), (b"bTRC", gamma_one)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + bytes(12)
              + b"acsp" + bytes(24) + struct.pack(">I", 0) + xyz(0.9642, 1.0, 0.8249)[8:] + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def reopen(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def rejection(raw: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        validate_image(raw, limits)
    assert caught.value.message and caught.value.message == str(caught.value)
    return caught.value


# What comes out for good images


@pytest.mark.parametrize(
    ("source", "mime", "extension"),
    [("PNG", "image/png", "png"), ("JPEG", "image/jpeg", "jpg"), ("WEBP", "image/webp", "webp")],
)
def test_it_keeps_each_accepted_format_and_names_it_from_the_content(source: str, mime: str, extension: str):
    # Given a small image in one of the accepted formats
    raw = encode(Image.new("RGB", (40, 30), (200, 30, 30)), source)
    # When it is validated
    result = validate_image(raw)
    # Then it comes back re-encoded in the same format, described by what was decoded
    assert isinstance(result, ValidatedImage)
    assert (result.mime, result.extension, result.width, result.height) == (mime, extension, 40, 30)
    assert reopen(result.data).format == source and reopen(result.data).size == (40, 30)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()


def test_it_has_no_say_for_the_file_name_or_the_clients_content_type():
    # A ".png" name or an "image/png" header proves nothing, so there is nowhere to pass one in
    assert list(inspect.signature(validate_image).parameters) == ["raw", "limits"]
    # Given JPEG bytes that a client would have sent as "photo.png"
    result = validate_image(encode(Image.new("RGB", (8, 8)), "JPEG"))
    # Then they are a JPEG
    assert result.mime == "image/jpeg" and result.extension == "jpg"


def test_it_turns_a_photo_the_way_its_exif_says_then_drops_the_exif_with_the_gps_position():
    # Given a 20×10 JPEG, red on the left and blue on the right, whose EXIF says "rotate 90° clockwise" and where
    photo = Image.new("RGB", (20, 10), (255, 0, 0))
    photo.paste((0, 0, 255), (10, 0, 20, 10))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "MarkerCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (51.0, 30.0, 12.5)
    gps[ExifTags.GPS.GPSMapDatum] = "SECRET-DATUM"
    raw = encode(photo, "JPEG", exif=exif, quality=95)
    assert b"SECRET-DATUM" in raw
    # When it is validated
    result = validate_image(raw)
    # Then it stands upright, the left (red) edge now at the top
    assert (result.width, result.height) == (10, 20)
    upright = reopen(result.data)
    assert upright.size == (10, 20)
    red, _, blue = upright.getpixel((5, 3))
    assert red > 200 and blue < 60
    red, _, blue = upright.getpixel((5, 16))
    assert red < 60 and blue > 200
    # And no EXIF survives: no orientation to apply twice, no camera, no position
    assert dict(upright.getexif()) == {}
    assert "exif" not in upright.info
    for secret in (b"SECRET-DATUM", b"MarkerCam", b"Exif\x00\x00"):
        assert secret not in result.data


def test_it_drops_xmp_and_comments_which_pillow_would_otherwise_copy_into_a_jpeg():
    # Given a JPEG with an XMP packet and a comment holding a script
    raw = encode(Image.new("RGB", (16, 16), "green"), "JPEG", xmp=b"<x:xmpmeta>SECRET-XMP</x:xmpmeta>", comment=SCRIPT)
    # When it is validated
    result = validate_image(raw)
    # Then neither is in the stored copy
    assert b"SECRET-XMP" not in result.data and b"<script" not in result.data
    assert not {"xmp", "comment", "exif"} & set(reopen(result.data).info)


def test_it_drops_png_text_chunks_where_a_polyglot_would_hide_its_html():
    # Given a PNG carrying HTML in a tEXt chunk and EXIF in an eXIf chunk
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    text.add_text("Comment", SCRIPT.decode())
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "MarkerCam"
    raw = encode(Image.new("RGB", (16, 16)), "PNG", pnginfo=text, exif=exif)
    assert SCRIPT in raw and b"MarkerCam" in raw
    # When it is validated
    result = validate_image(raw)
    # Then only pixels are left
    assert b"<script" not in result.data and b"MarkerCam" not in result.data
    assert b"tEXt" not in result.data and b"eXIf" not in result.data


def test_it_keeps_the_first_frame_of_a_gif_as_a_png():
    # Given a three-frame GIF: red, blue, green
    raw = animated_gif(3, colours=[0, 1, 2])
    # When it is validated
    result = validate_image(raw)
    # Then the stored copy is a still PNG of the red first frame
    assert (result.mime, result.extension) == ("image/png", "png")
    still = reopen(result.data)
    assert still.format == "PNG" and getattr(still, "n_frames", 1) == 1
    assert still.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_it_keeps_the_first_frame_of_an_animated_webp():
    # Given a two-frame WebP animation
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    raw = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    # When it is validated
    result = validate_image(raw)
    # Then a still WebP of the first frame is stored
    still = reopen(result.data)
    assert result.mime == "image/webp" and getattr(still, "n_frames", 1) == 1
    red, green, blue = still.convert("RGB").getpixel((4, 4))
    assert red > 200 and blue < 60


@pytest.mark.parametrize("source", ["PNG", "WEBP"])
def test_it_keeps_transparency(source: str):
    # Given a half-transparent image
    options = {"lossless": True} if source == "WEBP" else {}
    raw = encode(Image.new("RGBA", (10, 10), (0, 128, 255, 100)), source, **options)
    # When it is validated
    result = validate_image(raw)
    # Then the stored copy and its thumbnail still have their alpha channel
    assert reopen(result.data).mode == "RGBA" and reopen(result.data).getpixel((5, 5))[3] == 100
    assert reopen(result.thumbnail).mode == "RGBA"


def test_it_turns_a_palette_with_a_transparent_colour_into_an_alpha_channel():
    # Given a palette PNG whose colour 0 is transparent
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.putpixel((0, 0), 1)
    raw = encode(image, "PNG", transparency=0)
    # When it is validated
    out = reopen(validate_image(raw).data)
    # Then transparency survives as alpha, not in a palette
    assert out.mode == "RGBA"
    assert out.getpixel((1, 1))[3] == 0 and out.getpixel((0, 0)) == (255, 255, 255, 255)


def test_it_makes_a_webp_thumbnail_no_larger_than_the_limit():
    # Given a wide picture and a small one
    wide = validate_image(encode(Image.new("RGB", (1000, 500), "red"), "PNG"))
    small = validate_image(encode(Image.new("RGB", (50, 20), "red"), "PNG"))
    custom = validate_image(encode(Image.new("RGB", (1000, 500), "red"), "PNG"), ImageLimits(thumbnail_side=100))
    # Then the thumbnails are WebP, shrunk to fit the square, never enlarged
    assert wide.thumbnail_mime == small.thumbnail_mime == "image/webp"
    assert reopen(wide.thumbnail).format == "WEBP"
    assert reopen(wide.thumbnail).size == (384, 192)
    assert reopen(small.thumbnail).size == (50, 20)
    assert reopen(custom.thumbnail).size == (100, 50)
    # And the stored image itself keeps its full size
    assert (wide.width, wide.height) == (1000, 500)


def test_it_turns_a_cmyk_jpeg_into_rgb():
    # Given a CMYK JPEG, as print workflows make them
    raw = encode(Image.new("CMYK", (10, 10), (0, 255, 255, 0)), "JPEG")
    assert reopen(raw).mode == "CMYK"
    # When it is validated
    out = reopen(validate_image(raw).data)
    # Then browsers get an RGB JPEG of the same red
    assert out.format == "JPEG" and out.mode == "RGB"
    red, green, blue = out.getpixel((5, 5))
    assert red > 200 and green < 60 and blue < 60


def test_it_scales_a_16_bit_png_down_instead_of_clipping_it():
    # Given a 16-bit greyscale PNG, where 32,768 is mid-grey
    image = Image.new("I;16", (4, 1))
    for x, value in enumerate([0, 1000, 32768, 65535]):
        image.putpixel((x, 0), value)
    raw = encode(image, "PNG")
    assert reopen(raw).mode == "I;16"
    # When it is validated
    out = reopen(validate_image(raw).data)
    # Then it is an 8-bit PNG of the same greys (Pillow's own conversion would make them all white)
    assert out.mode == "L"
    assert [out.getpixel((x, 0)) for x in range(4)] == [0, 4, 128, 255]


def test_it_converts_colours_to_srgb_and_does_not_keep_the_icc_profile():
    # Given a mid-grey image whose profile says its values are linear light
    raw = encode(Image.new("RGB", (4, 4), (128, 128, 128)), "PNG", icc_profile=linear_rgb_profile())
    assert reopen(raw).info.get("icc_profile")
    # When it is validated
    out = reopen(validate_image(raw).data)
    # Then the grey is re-expressed in sRGB (linear 50% is sRGB 188), with no profile left to parse
    assert "icc_profile" not in out.info
    assert all(abs(channel - 188) <= 2 for channel in out.getpixel((1, 1)))


def test_it_ignores_an_icc_profile_it_cannot_read():
    # Given a JPEG with a garbage "profile"
    raw = encode(Image.new("RGB", (4, 4), (10, 20, 30)), "JPEG", icc_profile=b"not a profile" * 10)
    # When it is validated
    result = validate_image(raw)
    # Then the picture is kept, without the blob
    assert "icc_profile" not in reopen(result.data).info and b"not a profile" not in result.data


def test_it_keeps_a_png_followed_by_html_but_not_the_html():
    # Given a PNG with a web page appended after IEND
    raw = encode(Image.new("RGB", (8, 8), "blue"), "PNG") + SCRIPT
    # When it is validated
    result = validate_image(raw)
    # Then the image is kept, and the page is not in the stored bytes
    assert result.mime == "image/png"
    assert b"<script" not in result.data and b"<html" not in result.data


def test_it_accepts_a_file_of_exactly_the_byte_limit():
    raw = encode(Image.new("RGB", (8, 8)), "PNG")
    assert validate_image(raw, ImageLimits(max_bytes=len(raw))).mime == "image/png"


def test_it_accepts_exactly_the_frame_limit():
    assert validate_image(animated_gif(5), ImageLimits(max_frames=5)).mime == "image/png"


# What is refused, and why


BAD_INPUTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "a 0-byte file": (lambda: b"", "empty_file"),
    "a ZIP renamed .png": (zip_file, "not_an_image"),
    "an SVG with a script": (svg_with_script, "not_an_image"),
    "HTML with a PNG after it": (lambda: SCRIPT + encode(Image.new("RGB", (8, 8)), "PNG"), "not_an_image"),
    "plain text": (lambda: b"hello, this is not an image\n", "not_an_image"),
    "a TIFF": (lambda: encode(Image.new("RGB", (8, 8)), "TIFF"), "not_an_image"),
    "a BMP": (lambda: encode(Image.new("RGB", (8, 8)), "BMP"), "not_an_image"),
    "an ICO": (lambda: encode(Image.new("RGB", (16, 16)), "ICO"), "not_an_image"),
    "an EPS, which would run Ghostscript": (lambda: encode(Image.new("RGB", (8, 8)), "EPS"), "not_an_image"),
    "a PNG cut in half": (lambda: (png := encode(noise((64, 64)), "PNG"))[: len(png) // 2], "corrupt_image"),
    "a JPEG cut in half": (lambda: (jpg := encode(noise((64, 64)), "JPEG"))[: len(jpg) // 2], "corrupt_image"),
    "a GIF cut in half": (lambda: (gif := encode(noise((64, 64), "L"), "GIF"))[: len(gif) // 2], "corrupt_image"),
    "a 20,000 × 20,000 PNG bomb": (lambda: png_header_only(20_000, 20_000), "too_many_pixels"),
    "an animated GIF of 1,000 frames": (lambda: animated_gif(1000), "too_many_frames"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_it_refuses_bad_input_with_a_clear_reason(name: str):
    # Given one file from the corpus of things people upload to break a site
    build, code = BAD_INPUTS[name]
    # When it is validated
    refused = rejection(build())
    # Then it is refused for the right reason, with a sentence a person can read
    assert refused.code == code
    assert refused.message.endswith(".") and len(refused.message) > 10


def test_it_names_only_the_accepted_formats_when_refusing_something_else():
    assert rejection(zip_file()).message == "The file is not a PNG, JPEG, WebP or GIF image."


def test_it_refuses_a_png_whose_checksum_is_wrong():
    # Given a PNG whose image data is intact but whose IDAT checksum is wrong
    raw = bytearray(encode(noise((32, 32)), "PNG"))
    at = raw.index(b"IDAT")
    (length,) = struct.unpack(">I", raw[at - 4 : at])
    raw[at + 4 + length] ^= 0xFF
    reopen(bytes(raw))  # decoding alone does not notice
    # Then verify() does
    assert rejection(bytes(raw)).code == "corrupt_image"


def test_it_refuses_a_pixel_bomb_from_its_header_without_decoding_or_allocating(monkeypatch: pytest.MonkeyPatch):
    # Given a PNG of a few dozen bytes whose header claims 20,000 × 20,000 pixels (1.2 GB once decoded)
    raw = png_header_only(20_000, 20_000)
    assert len(raw) < 100

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # When it is validated
    tracemalloc.start()
    started = time.perf_counter()
    try:
        refused = rejection(raw)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Then it is refused at once, before any pixel is decoded. (tracemalloc only sees Python's allocator, not
    # Pillow's C buffers: the load() trap above is what proves nothing was decoded.)
    assert refused.code == "too_many_pixels"
    assert time.perf_counter() - started < 1
    assert peak < 50 * 1024 * 1024


def test_it_refuses_more_pixels_than_the_limit_and_says_how_many():
    # Given an 8,000 × 8,000 PNG header: under Pillow's own bomb threshold, over ours
    refused = rejection(png_header_only(8_000, 8_000))
    # Then the message gives the numbers
    assert refused.code == "too_many_pixels"
    assert "8,000 × 8,000" in refused.message and "64,000,000" in refused.message and "40,000,000" in refused.message


def test_it_refuses_a_side_longer_than_the_limit():
    # Given a thin image, few pixels in all, but wider than any screen
    refused = rejection(png_header_only(12_001, 1))
    assert refused.code == "too_many_pixels" and "12,000" in refused.message


def test_it_turns_pillows_bomb_warning_into_a_refusal_without_changing_global_settings():
    # Given limits looser than Pillow's, and a header between Pillow's warning and error thresholds
    limits = ImageLimits(max_pixels=10**9, max_side=50_000)
    pixels_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    # When it is validated
    refused = rejection(png_header_only(10_000, 10_000), limits)
    # Then Pillow's warning refused it, and nothing process-wide was left changed
    assert refused.code == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS == pixels_before and list(warnings.filters) == filters_before


def test_it_refuses_a_file_over_the_byte_limit_before_opening_it(monkeypatch: pytest.MonkeyPatch):
    # Given a valid PNG one byte over a small limit
    raw = encode(Image.new("RGB", (8, 8)), "PNG")

    def no_opening(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Image, "open", no_opening)
    # Then its size alone refuses it
    refused = rejection(raw, ImageLimits(max_bytes=len(raw) - 1))
    assert refused.code == "too_large"


def test_it_refuses_one_frame_more_than_the_limit_in_any_animated_format():
    frames = [Image.new("RGB", (2, 2), colour) for colour in ("red", "blue", "green", "white")]
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    limits = ImageLimits(max_frames=3)
    for raw in (animated_gif(4), webp, apng):
        refused = rejection(raw, limits)
        assert refused.code == "too_many_frames" and "3" in refused.message


# How it fails when the problem is not the file


def test_it_will_not_run_if_truncated_images_were_allowed_process_wide(monkeypatch: pytest.MonkeyPatch):
    # Someone else's code may flip this global; then half a PNG would load as a whole one
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate_image(encode(Image.new("RGB", (8, 8)), "PNG"))


def test_it_lets_memory_errors_through(monkeypatch: pytest.MonkeyPatch):
    # Running out of memory is the server's problem, not a damaged file: it must not read as "corrupt_image"
    def out_of_memory(*args: object, **kwargs: object) -> bytes:
        raise MemoryError

    monkeypatch.setattr(images, "_encode", out_of_memory)
    with pytest.raises(MemoryError):
        validate_image(encode(Image.new("RGB", (8, 8)), "PNG"))


def test_it_reports_an_unexpected_pillow_error_as_a_damaged_image(monkeypatch: pytest.MonkeyPatch):
    def surprise(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("some decoder's own exception")

    monkeypatch.setattr(images, "_encode", surprise)
    assert rejection(encode(Image.new("RGB", (8, 8)), "PNG")).code == "corrupt_image"
