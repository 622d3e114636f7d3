"""Where thumbnails come from: an item's recorded source only (local files, WebDataset tar samples)."""

from __future__ import annotations

import io

import pytest
from corpora import jpeg_bytes, write_tar
from PIL import Image

from pipeline.serve.thumbnails import NoThumbnail, ThumbnailCache, make_thumbnail, read_source_image


def test_local_files_and_tar_samples(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg_bytes(1))
    assert read_source_image(str(photo)) == jpeg_bytes(1)
    assert read_source_image(f"file://{photo}") == jpeg_bytes(1)
    tar = write_tar(
        tmp_path / "00000.tar",
        [{"__key__": f"{i:04d}", "jpg": jpeg_bytes(10 + i), "txt": b"caption"} for i in range(3)],
    )
    assert read_source_image(f"{tar}#0002") == jpeg_bytes(12)  # `latent embed` records TAR#key
    with pytest.raises(NoThumbnail, match="no image for sample"):
        read_source_image(f"{tar}#9999")


@pytest.mark.parametrize(
    "source",
    [None, "", "s3://bucket/a.jpg", "https://example.com/a.jpg", "/nonexistent/a.jpg", "table.parquet:17"],
)
def test_sources_without_a_local_image_have_no_thumbnail(source):
    with pytest.raises(NoThumbnail):
        read_source_image(source)


def test_a_local_file_that_is_not_an_image_is_not_served(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    with pytest.raises(NoThumbnail, match="not an image file"):
        read_source_image(str(secret))


def test_thumbnails_are_small_jpegs_and_bombs_or_garbage_are_refused():
    big = io.BytesIO()
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(big, format="PNG")
    thumb = Image.open(io.BytesIO(make_thumbnail(big.getvalue(), 256, 10**7)))
    assert thumb.format == "JPEG" and thumb.size == (256, 128)
    with pytest.raises(NoThumbnail, match="too large"):
        make_thumbnail(big.getvalue(), 256, 1200 * 600 - 1)
    with pytest.raises(NoThumbnail, match="cannot decode"):
        make_thumbnail(b"garbage", 256, 10**7)


def test_cache_keeps_the_most_recent():
    cache = ThumbnailCache(2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1", None, b"3")
