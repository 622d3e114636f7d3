"""`latent embed`: a corpus -> an embedding dataset."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.common import (
    COMMIT_EVERY_HELP,
    COMMIT_EVERY_S,
    PRECISION_HELP,
    Device,
    InputFormat,
    Modality,
    Precision,
    RayConfig,
)
from pipeline.config.settings import REQUIRED, setting


class OutputDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


@dataclass
class InputConfig:
    path: str = setting(REQUIRED, "folder of images, WebDataset tars (folder or brace pattern), or a table file/folder")
    format: InputFormat = setting(InputFormat.auto, "auto | images | webdataset | parquet | csv | jsonl")
    image_column: str | None = setting(
        None,
        "tables: column of image paths or bytes (null: image, image_path, img, jpg, path, filepath, file, "
        "image_bytes if present)",
    )
    text_column: str | None = setting(None, "tables: column of texts (null: text, caption, txt if present)")
    id_column: str | None = setting(None, "tables: column of stable ids (null: id, key if present, else file and row)")
    files_per_task: int = setting(256, "image files per read task")


@dataclass
class ModelConfig:
    name: str = setting("ViT-B-32", "an open_clip model name (presets: model=vit-b-32 | vit-l-14)")
    pretrained: str | None = setting(
        "laion2b_s34b_b79k", "open_clip pretrained tag, a local checkpoint file, or null (random weights)"
    )
    precision: Precision = setting(Precision.auto, PRECISION_HELP)
    device: Device = setting(Device.auto, "auto (cuda when the cluster has GPUs) | cpu | cuda")


@dataclass
class OutputConfig:
    path: str = setting(REQUIRED, "the embedding dataset to write (docs/embedding-dataset.md)")
    dtype: OutputDtype = setting(OutputDtype.float16, "float16 | float32")
    rows_per_shard: int = setting(8192, "rows per Parquet shard")
    commit_every_s: float | None = setting(COMMIT_EVERY_S, COMMIT_EVERY_HELP)


@dataclass
class EmbedResources:
    """Resources of the embed job's stages; nulls are derived from the cluster at the edge."""

    encoder_actors: int | None = setting(None, "null: one per GPU (gpus_per_encoder each), or one CPU actor per node")
    gpus_per_encoder: float = setting(1.0, "GPUs per encoder actor (CUDA only)")
    cpus_per_encoder: float | None = setting(
        None, "null: 1 reserved (a CPU actor runs torch on all of its node's cores)"
    )
    cpus_per_reader: float = setting(1.0, "CPUs per decode/preprocess task")
    object_store_budget: int | None = setting(
        2147483648, "bytes in flight between stages: readers wait beyond it, so memory stays flat (null: Ray's default)"
    )


@dataclass
class DecodeConfig:
    """Where and how images are decoded (docs/embedding-dataset.md, "Decoding")."""

    device: Device = setting(
        Device.auto,
        "auto (cuda when the encoder is on a GPU) | cpu (Pillow in decode tasks: exact) | cuda (the encoder gets "
        "the JPEG bytes and decodes each batch with nvJPEG; cosine >= 0.995 to exact; other images take Pillow)",
    )
    draft: bool = setting(
        False,
        "CPU path: decode JPEGs >= 4x the model input at a reduced DCT scale (Pillow's draft) before the exact "
        "resize; faster, vectors not bit-equal (cosine >= 0.995)",
    )


@dataclass
class EmbedConfig:
    input: InputConfig = setting(InputConfig, "the corpus")
    model: ModelConfig = setting(ModelConfig, "the open_clip encoder")
    output: OutputConfig = setting(OutputConfig, "the embedding dataset")
    ray: RayConfig = setting(RayConfig, "where the job runs")
    resources: EmbedResources = setting(EmbedResources, "per stage; on a cluster the nulls are derived from it")
    decode: DecodeConfig = setting(DecodeConfig, "where and how images are decoded (docs/embedding-dataset.md)")
    modality: Modality = setting(
        Modality.auto, "auto (images, plus captions where they exist; else texts) | image | text | both"
    )
    batch_size: int | None = setting(
        None,
        "rows per encoder batch (null: 256 on CUDA, 32 on CPU, where a batch is then seconds of work: progress "
        "moves and commits come that often)",
    )
    max_error_fraction: float = setting(0.1, "fail the job once more than this fraction of rows failed")
    max_image_pixels: int = setting(89478485, "larger images are recorded as errors (decompression bombs)")
    progress: bool = setting(True, "show a progress bar")
