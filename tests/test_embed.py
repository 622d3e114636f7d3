"""The embed job end to end on a real local Ray with a real (tiny) open_clip model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch
from conftest import embed_overrides
from corpora import jpeg_bytes, write_image_folder, write_table, write_tar, write_webdataset
from PIL import Image

from pipeline.cli import compose
from pipeline.embed import EmbedSummary, run_embed
from pipeline.errors import LatentError
from pipeline.io.shards import METADATA_KEY, EmbeddingInfo, arrow_to_vectors, list_shards, read_info


def embed(tmp_path, input_path, model, *extra, out="out"):
    cfg = compose("embed", embed_overrides(input_path, tmp_path / out, model, *extra))
    return run_embed(cfg), tmp_path / out


def read_dataset(path) -> pa.Table:
    return pads.dataset(str(path), format="parquet").to_table()


def test_image_folder_vectors_equal_open_clip_direct_encoding(local_ray, tmp_path, photos, tiny_model, tiny_checkpoint):
    summary, out = embed(tmp_path, photos, tiny_model, f"model.pretrained={tiny_checkpoint}", "output.dtype=float32")
    table = read_dataset(out)
    assert summary.rows == table.num_rows == 6 and summary.errors == 0
    info = read_info(str(out))
    assert info.modality == "both" and info.dtype == "float32" and info.dim == 32
    assert info.model["checkpoint_sha256"] and info.model["pretrained"] == "tiny.pt"

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_model, pretrained=str(tiny_checkpoint))
    tokenizer = open_clip.get_tokenizer(tiny_model)
    model.eval()
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == {str(p.relative_to(photos)) for p in photos.rglob("*") if p.suffix in (".jpg", ".png")}
    with torch.no_grad():
        for row_id, row in rows.items():
            image = preprocess(Image.open(photos / row_id)).unsqueeze(0)
            expected_image = model.encode_image(image, normalize=True)[0].numpy()
            expected_text = model.encode_text(tokenizer([row["text"]]), normalize=True)[0].numpy()
            np.testing.assert_allclose(row["image_embedding"], expected_image, atol=2e-5)
            np.testing.assert_allclose(row["text_embedding"], expected_text, atol=2e-5)
            assert json.loads(row["metadata"])["sample"] in row_id


def test_shards_carry_the_schema_and_metadata_contract(local_ray, tmp_path, photos, tiny_model):
    _, out = embed(tmp_path, photos, tiny_model)
    for path in list_shards(str(out)):
        schema = pads.dataset(path, format="parquet").schema
        assert schema.field("id").type == pa.string() and not schema.field("id").nullable
        assert schema.field("image_embedding").type == pa.list_(pa.float16(), 32)
        assert schema.field("text_embedding").type == pa.list_(pa.float16(), 32)
        recorded = EmbeddingInfo.from_json(schema.metadata[METADATA_KEY])
        assert recorded.format_version == 1 and recorded.normalized
        assert recorded.model["random_weights_seed"] == 0
    vectors = arrow_to_vectors(read_dataset(out).column("image_embedding"))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    assert (out / "_SUCCESS").exists()
    summary = json.loads((out / "_latent" / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["rows_per_second"] > 0
    (run,) = (out / "_latent" / "runs").iterdir()
    assert "tiny" in (run / "config.yaml").read_text() and (run / "version.json").exists()


def test_webdataset_tars(local_ray, tmp_path, tiny_model):
    shards = write_webdataset(tmp_path / "wds", shards=2, per_shard=5)
    summary, out = embed(tmp_path, f"'{shards}/{{00000..00001}}.tar'", tiny_model)  # quoted for Hydra
    table = read_dataset(out)
    assert summary.rows == 10
    assert sorted(table.column("id").to_pylist()) == [f"{s:05d}{i:04d}" for s in range(2) for i in range(5)]
    assert table.column("text").to_pylist()[0].startswith("sample ")
    assert "image_embedding" in table.column_names and "text_embedding" in table.column_names


def test_parquet_with_image_bytes_and_ids(local_ray, tmp_path, tiny_model):
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(7)],
            "image": [jpeg_bytes(i) for i in range(7)],
            "caption": [f"caption {i}" for i in range(7)],
            "license": ["cc-by"] * 7,
            "source": ["web"] * 7,
        }
    )
    write_table(tmp_path / "t" / "part.parquet", table)
    summary, out = embed(tmp_path, tmp_path / "t", tiny_model, "input.id_column=key")
    result = read_dataset(out)
    assert summary.rows == 7
    assert sorted(result.column("id").to_pylist()) == [f"k{i}" for i in range(7)]
    assert result.column("license").to_pylist() == ["cc-by"] * 7
    assert result.column("input_source").to_pylist() == ["web"] * 7  # a reserved name, renamed


def test_csv_with_relative_image_paths(local_ray, tmp_path, tiny_model):
    folder = write_image_folder(tmp_path / "t" / "imgs", 4, captions=False)
    paths = sorted(str(p.relative_to(tmp_path / "t")) for p in folder.rglob("*.jpg"))
    write_table(tmp_path / "t" / "index.csv", pa.table({"path": paths, "text": [f"t{i}" for i in range(4)]}))
    summary, out = embed(tmp_path, tmp_path / "t" / "index.csv", tiny_model, "modality=image")
    result = read_dataset(out)
    assert summary.rows == 4
    assert sorted(result.column("id").to_pylist()) == [f"index.csv:{i}" for i in range(4)]
    assert "text_embedding" not in result.column_names


def test_jsonl_texts(local_ray, tmp_path, tiny_model):
    texts = ["a cat playing jazz", "a dog on a skateboard", "", "the moon"]
    path = write_table(tmp_path / "t" / "q.jsonl", pa.table({"text": texts, "lang": ["en"] * 4}))
    with path.open("a") as f:
        f.write('{"text": "a broken line", "lang": \n{"text": "after it", "lang": "en"}\n')
    summary, out = embed(tmp_path, tmp_path / "t", tiny_model, "max_error_fraction=0.5")
    assert summary.rows == 4 and summary.errors == 2  # the empty text and the malformed line are recorded
    errors = dict(zip(*read_dataset(out / "_errors").select(["id", "error"]).to_pydict().values()))
    assert errors["q.jsonl:2"] == "missing text"
    assert errors["q.jsonl:4"].startswith(f"malformed JSON at {path} line 5")
    assert "q.jsonl:5" in read_dataset(out).column("id").to_pylist()  # the rest of the file is read


def test_a_partly_captioned_folder_embeds_every_image_and_the_captions_there_are(local_ray, tmp_path, tiny_model):
    corpus = write_image_folder(tmp_path / "corpus", 11, captions=False)
    (corpus / "group0" / "img00000.txt").write_text("the one caption")
    summary, out = embed(tmp_path, corpus, tiny_model)
    assert summary.rows == 11 and summary.errors == 0
    table = read_dataset(out)
    assert table.column("image_embedding").null_count == 0
    texts = dict(zip(table.column("id").to_pylist(), table.column("text_embedding").is_valid().to_pylist()))
    assert [i for i, has in texts.items() if has] == ["group0/img00000.jpg"]
    info = read_info(str(out))
    assert (info.modality, info.optional, info.format_version) == ("both", ["text"], 2)
    # the same output with another modality: refused, saying how to resume it
    with pytest.raises(LatentError, match=r"Rerun with the modality it was written with \(modality=auto\)"):
        embed(tmp_path, corpus, tiny_model, "modality=image")
    # modality=both asks for a caption per image: each missing one says what else to use
    with pytest.raises(LatentError, match="max_error_fraction"):
        embed(tmp_path, corpus, tiny_model, "modality=both", out="both")
    error = read_dataset(tmp_path / "both" / "_errors").column("error")[0].as_py()
    assert error.startswith("missing caption") and "modality=auto embeds every image" in error


def test_bad_files_are_recorded_and_skipped(local_ray, tmp_path, photos, tiny_model):
    corpus = write_image_folder(tmp_path / "corpus", 12)
    good = (corpus / "group0" / "img00000.jpg").read_bytes()
    (corpus / "zero.jpg").write_bytes(b"")
    (corpus / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (corpus / "not-an-image.png").write_bytes(b"<html>hello</html>")
    (corpus / "bomb.png").write_bytes(_png_of_size(4000, 4000))
    (corpus / "nocaption.jpg").write_bytes(good)
    summary, out = embed(tmp_path, corpus, tiny_model, "max_error_fraction=0.5", "max_image_pixels=10000000")
    assert summary.rows == 13 and summary.errors == 4
    errors = {r["id"]: r["error"] for r in read_dataset(out / "_errors").to_pylist()}
    assert errors["zero.jpg"] == "empty file"
    assert errors["truncated.jpg"].startswith("cannot decode")
    assert errors["not-an-image.png"].startswith("cannot decode")
    assert errors["bomb.png"].startswith("image too large")
    assert not any(" at 0x" in e for e in errors.values())  # no Python object addresses
    embedded = read_dataset(out)
    assert not set(errors) & set(embedded.column("id").to_pylist())
    nocaption = embedded.filter(pa.compute.equal(embedded.column("id"), "nocaption.jpg"))  # the image, no text
    assert nocaption.column("image_embedding").is_valid()[0].as_py()
    assert not nocaption.column("text_embedding").is_valid()[0].as_py()


def test_too_many_errors_fail_the_job_and_keep_finished_shards(local_ray, tmp_path, tiny_model):
    corpus = write_image_folder(tmp_path / "corpus", 3)
    for i in range(3):
        (corpus / f"broken{i}.jpg").write_bytes(b"broken")
    with pytest.raises(LatentError, match="max_error_fraction"):
        embed(tmp_path, corpus, tiny_model, "max_error_fraction=0.1")
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert read_dataset(tmp_path / "out").num_rows == 3


def test_rerun_of_a_finished_job_does_nothing(local_ray, tmp_path, tiny_model, capsys):
    corpus = write_image_folder(tmp_path / "corpus", 5)
    embed(tmp_path, corpus, tiny_model)
    shards = list_shards(str(tmp_path / "out"))
    summary, _ = embed(tmp_path, corpus, tiny_model)
    assert summary.already_complete and summary.rows == 5
    assert "nothing to do" in capsys.readouterr().out
    assert list_shards(str(tmp_path / "out")) == shards


def test_rerun_of_a_finished_job_says_so_before_ray_the_model_or_the_input(local_ray, tmp_path, tiny_model):
    """The plain CLI (the tiny model unregistered: building it would fail), an unreachable Ray address and a
    missing input: "already complete" can only come out if none of them is touched."""
    corpus = write_image_folder(tmp_path / "corpus", 3)
    embed(tmp_path, corpus, tiny_model)
    args = [f"input.path={tmp_path / 'gone'}", f"output.path={tmp_path / 'out'}", f"model.name={tiny_model}"]
    args += ["model.pretrained=null", "ray.address=127.0.0.1:1"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "embed", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "is already complete (3 rows, 0 errors); nothing to do" in done.stdout


def test_reusing_an_output_with_another_model_is_refused(local_ray, tmp_path, tiny_model, tiny_checkpoint):
    corpus = write_image_folder(tmp_path / "corpus", 3)
    embed(tmp_path, corpus, tiny_model)
    with pytest.raises(LatentError, match="another model"):
        embed(tmp_path, corpus, tiny_model, f"model.pretrained={tiny_checkpoint}")


def test_resume_skips_committed_ids(local_ray, tmp_path, tiny_model):
    """A job that stopped after some shards redoes only the rest (the kill -9 test does it for real)."""
    corpus = write_image_folder(tmp_path / "corpus", 9)
    embed(tmp_path, corpus, tiny_model, "output.rows_per_shard=3", "batch_size=3", "input.files_per_task=3")
    out = tmp_path / "out"
    shards = list_shards(str(out))
    (out / "_SUCCESS").unlink()
    removed = pads.dataset(shards[0], format="parquet").to_table().column("id").to_pylist()
    (out / shards[0].split("/")[-1]).unlink()
    summary, _ = embed(tmp_path, corpus, tiny_model, "output.rows_per_shard=3", "batch_size=3")
    assert summary.rows_this_run == len(removed) and summary.rows == 9
    assert sorted(read_dataset(out).column("id").to_pylist()) == sorted(
        str(p.relative_to(corpus)) for p in corpus.rglob("*.jpg")
    )


def test_a_small_job_runs_in_the_process_without_ray_and_writes_what_ray_writes(local_ray, tmp_path, tiny_model):
    """ray.inline_max_rows: the real CLI with Ray's temp folder empty and kept so; same rows, vectors and errors as
    the Ray path; then a lost shard is redone inline and nothing else."""
    corpus = write_image_folder(tmp_path / "corpus", 9)
    (corpus / "broken.jpg").write_bytes(b"broken")
    small = ("output.rows_per_shard=3", "batch_size=2", "max_error_fraction=0.5", "output.dtype=float32")
    by_ray, _ = embed(tmp_path, corpus, tiny_model, *small, out="ray")

    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    args = embed_overrides(corpus, tmp_path / "inline", tiny_model, *small, "ray.inline_max_rows=10")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled"}
    tiny_cli = str(Path(__file__).parent / "tiny_cli.py")
    done = subprocess.run(
        [sys.executable, tiny_cli, "embed", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in this process, without Ray (10 rows <= ray.inline_max_rows)" in done.stdout
    assert not list(ray_tmp.iterdir())  # no Ray session was started
    out = tmp_path / "inline"
    (run,) = (out / "_latent" / "runs").iterdir()
    assert json.loads((run / "ray.json").read_text()) == {"inline": True}

    ours, theirs = read_dataset(out).sort_by("id"), read_dataset(tmp_path / "ray").sort_by("id")
    assert ours.column("id").to_pylist() == theirs.column("id").to_pylist() and ours.num_rows == by_ray.rows == 9
    np.testing.assert_allclose(
        arrow_to_vectors(ours.column("image_embedding")), arrow_to_vectors(theirs.column("image_embedding")), atol=1e-5
    )
    assert read_dataset(out / "_errors").column("id").to_pylist() == ["broken.jpg"]
    assert all(pads.dataset(s, format="parquet").count_rows() <= 3 for s in list_shards(str(out)))  # rows_per_shard

    shards = list_shards(str(out))
    lost = pads.dataset(shards[0], format="parquet").to_table().column("id").to_pylist()
    (out / shards[0].split("/")[-1]).unlink()
    (out / "_SUCCESS").unlink()
    again, _ = embed(tmp_path, corpus, tiny_model, *small, "ray.inline_max_rows=10", out="inline")
    assert again.rows_this_run == len(lost) and again.rows == 9
    assert sorted(read_dataset(out).column("id").to_pylist()) == sorted(theirs.column("id").to_pylist())


def test_a_broken_tar_keeps_its_readable_samples(local_ray, tmp_path, tiny_model):
    root = tmp_path / "wds"
    root.mkdir()
    path = write_tar(root / "a.tar", [{"__key__": f"k{i}", "jpg": jpeg_bytes(i), "txt": b"x"} for i in range(4)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])  # cut inside the third sample
    summary, out = embed(tmp_path, root, tiny_model, "max_error_fraction=1.0")
    assert summary.rows >= 2 and summary.errors >= 1
    assert any("unreadable tar" in e for e in read_dataset(out / "_errors").column("error").to_pylist())


def _png_of_size(width: int, height: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_decoding_runs_in_its_own_tasks_not_inside_the_encoder(local_ray, tmp_path, tiny_model):
    from pipeline.embed import embed_job
    from pipeline.encode.model import describe_model, resolve_model
    from pipeline.encode.preprocess import ImagePrep
    from pipeline.io.sources import open_corpus
    from pipeline.runner import build_plan

    corpus = write_image_folder(tmp_path / "corpus", 4)
    cfg = compose("embed", embed_overrides(corpus, tmp_path / "out", tiny_model))
    spec = resolve_model(tiny_model, None)
    described = describe_model(spec)
    info = EmbeddingInfo.create(described.fingerprint, "float16", "image")
    job = embed_job(open_corpus(cfg.input), ImagePrep.from_transform(described.image_transform), spec, info, cfg)
    plan = build_plan(job)
    assert sum(b.num_rows for b in plan.iter_batches(batch_size=None, batch_format="pyarrow")) == 4
    stats = plan.stats()
    assert "MapBatches(_read_units)" in stats  # the runner's read stage, running embed's read_and_prepare
    assert "_read_units)->MapBatches(_StageActor)" not in stats  # not fused into the encoder actor


def test_summary_reports_a_steady_pace_only_when_one_was_measured():
    measured = EmbedSummary("out", 100, 0, 100, 0, 10.0, 10.0, steady_rows_per_second=12.5)
    unmeasured = EmbedSummary("out", 20, 0, 20, 0, 10.0, 2.0, steady_rows_per_second=0.0)
    assert "12.5 rows/s steady" in measured.render()
    assert "n/a" in unmeasured.render() and "0.0 rows/s steady" not in unmeasured.render()
