"""The input readers on real files: what a bad input becomes (an error row naming the cause), without Ray."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from corpora import jpeg_bytes, write_image_folder, write_table
from PIL import Image

from pipeline.config import InputConfig
from pipeline.errors import LatentError, describe_error
from pipeline.io.sources import open_corpus, read_corpus_unit
from pipeline.io.tables import read_images


def read_all(source, done=None) -> pa.Table:
    tables = [t for unit in source.units for t in read_corpus_unit(unit, done)]
    return pa.concat_tables(tables, promote_options="default")


def errors_by_id(table: pa.Table) -> dict[str, str]:
    return {i: e for i, e in zip(table.column("id").to_pylist(), table.column("error").to_pylist()) if e}


def test_symlink_loops_and_broken_links_are_recorded_not_skipped(tmp_path):
    root = write_image_folder(tmp_path / "imgs", 3, captions=False)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a folder link back to the corpus
    (root / "a.jpg").symlink_to(root / "b.jpg")  # two file links pointing at each other
    (root / "b.jpg").symlink_to(root / "a.jpg")
    (root / "gone.jpg").symlink_to(root / "missing.jpg")
    elsewhere = write_image_folder(tmp_path / "more", 2, captions=False)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # a linked folder is read
    table = read_all(open_corpus(InputConfig(path=str(root), files_per_task=4)))
    errors = errors_by_id(table)
    assert set(errors) == {"loop", "a.jpg", "b.jpg", "gone.jpg"}
    assert "symbolic link loop" in errors["loop"]
    assert "Too many levels of symbolic links" in errors["a.jpg"]
    assert "No such file" in errors["gone.jpg"]
    ok = [i for i in table.column("id").to_pylist() if i not in errors]
    assert len(ok) == 5 and sum(i.startswith("linked/") for i in ok) == 2


def test_a_caption_that_is_not_utf8_is_recorded_not_mangled(tmp_path):
    root = write_image_folder(tmp_path / "imgs", 2)
    (root / "group0" / "img00000.txt").write_bytes("café au lait".encode("latin-1"))
    table = read_all(open_corpus(InputConfig(path=str(root))))
    errors = errors_by_id(table)
    assert list(errors) == ["group0/img00000.jpg"]
    assert "img00000.txt is not UTF-8" in errors["group0/img00000.jpg"] and "at byte 3" in errors["group0/img00000.jpg"]
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    assert texts["group1/img00001.jpg"] == "synthetic picture number 1"


def test_malformed_jsonl_lines_are_error_rows_naming_file_and_line(tmp_path):
    path = tmp_path / "t" / "q.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "a cat"}\n{"text": "a dog"\n\n[1, 2]\n{"text": "a bird"}\n')
    table = read_all(open_corpus(InputConfig(path=str(path.parent))))
    rows = dict(
        zip(table.column("id").to_pylist(), zip(table.column("text").to_pylist(), table.column("error").to_pylist()))
    )
    assert rows["q.jsonl:0"] == ("a cat", None)
    assert rows["q.jsonl:3"] == ("a bird", None)  # row numbers do not shift past a bad line
    assert f"{path} line 2" in rows["q.jsonl:1"][1] and "malformed JSON" in rows["q.jsonl:1"][1]
    assert f"{path} line 4" in rows["q.jsonl:2"][1] and "not an object" in rows["q.jsonl:2"][1]


def test_an_integer_image_column_is_a_clear_error_naming_it(tmp_path):
    write_table(tmp_path / "t.parquet", pa.table({"image": [1, 2], "caption": ["a", "b"]}))
    with pytest.raises(LatentError, match=r"input.image_column: column 'image' holds int64"):
        open_corpus(InputConfig(path=str(tmp_path / "t.parquet")))


def test_an_absolute_url_in_a_table_is_read_with_its_own_filesystem(tmp_path):
    memory = fsspec.filesystem("memory")
    memory.pipe("/latent-test/photo.jpg", jpeg_bytes(7))
    local_image = tmp_path / "local.jpg"
    local_image.write_bytes(jpeg_bytes(8))
    # a local table pointing at a memory:// URL, and a memory:// table pointing at a file:// URL
    images, errors, sources = read_images(["memory://latent-test/photo.jpg"], str(tmp_path / "t.parquet"))
    assert errors == [None] and images == [jpeg_bytes(7)] and sources == ["memory://latent-test/photo.jpg"]
    images, errors, _ = read_images([f"file://{local_image}", "rel.jpg"], "memory://latent-test/t.parquet")
    assert images[0] == jpeg_bytes(8) and errors[0] is None
    assert errors[1].startswith("cannot read image file")  # relative: on the table's (memory) filesystem


def test_error_strings_carry_no_object_addresses():
    try:
        Image.open(io.BytesIO(b"not an image"))
    except Exception as err:  # noqa: BLE001
        raw, described = str(err), describe_error(err)
    assert " at 0x" in raw
    assert " at 0x" not in described and "cannot identify image file" in described


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    from skimage import data

    from pipeline.encode.preprocess import decode_image

    eight = data.camera()  # a real 8-bit greyscale photo
    sixteen = eight.astype(np.uint16) * 257  # the same photo at 16 bits (255 -> 65535)
    buf = io.BytesIO()
    Image.fromarray(sixteen).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    decoded = np.asarray(decode_image(buf.getvalue(), 10**8).convert("RGB"))
    assert np.array_equal(decoded[..., 0], eight)
    assert (decoded == 255).mean() < 0.05  # not "almost all white"
    # and through open_clip's eval transform, pixel for pixel what the 8-bit photo gives
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from pipeline.encode.preprocess import ImagePrep

    prep = ImagePrep.from_transform(image_transform_v2(PreprocessCfg(size=(64, 64)), is_train=False))
    expected = prep.prepare(Image.fromarray(eight))
    assert np.array_equal(prep.prepare(decode_image(buf.getvalue(), 10**8)), expected)
