"""Issue 18: an output is held from a command's start to its publish, a create is checked at the publish
itself, an output inside an input is refused, and the vectors a job cannot use are named the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.cli import compose, quote_string_values
from pipeline.errors import LatentError
from pipeline.io.publish import hold_target, publish_directory, refuse_output_inside_inputs
from pipeline.io.vectors import NOT_FINITE, ZERO, usable, vector_errors


def test_a_second_holder_of_an_output_is_refused_until_the_first_publishes(tmp_path):
    target = tmp_path / "out"
    refused = pytest.raises(LatentError, match=rf"output.path={target} is being written by pid {os.getpid()}")
    with hold_target(target, "output.path"), refused, hold_target(target, "output.path"):
        pass
    with hold_target(target, "output.path"):  # released: the next run takes it
        pass


def test_a_create_is_checked_at_the_publish_not_only_at_the_start(tmp_path):
    target = tmp_path / "map"
    first, second = tmp_path / ".a", tmp_path / ".b"
    for staged, text in ((first, "first"), (second, "second")):
        staged.mkdir()
        (staged / "map.json").write_text(text)
    publish_directory(first, target, create="output.path")
    with pytest.raises(LatentError, match="created by another run meanwhile"):
        publish_directory(second, target, create="output.path")
    assert (target / "map.json").read_text() == "first" and not second.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    staged = tmp_path / ".c"
    staged.mkdir()
    publish_directory(staged, empty, create="output.path")  # a folder the user made empty is no result
    assert empty.is_dir() and not staged.exists()


@pytest.mark.parametrize("inside", ["", "map", "a/b"])
def test_an_output_inside_or_equal_to_an_input_is_refused(tmp_path, inside):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(LatentError, match="inside input.path"):
        refuse_output_inside_inputs({"output.path": str(data / inside)}, {"input.path": str(data), "x": None})
    refuse_output_inside_inputs({"output.path": str(tmp_path / "data-map")}, {"input.path": str(data)})  # beside


def test_unusable_vectors_are_named_alike_in_every_job():
    vectors = np.array([[1, 0], [np.nan, 0], [0, 0], [np.inf, 1]], np.float32)
    assert vector_errors(vectors, "ip") == [None, NOT_FINITE, ZERO, NOT_FINITE]
    assert vector_errors(vectors, "l2") == [None, NOT_FINITE, None, NOT_FINITE]  # a zero point has a place in l2
    assert usable(vectors, "ip").tolist() == [True, False, False, False]


def test_string_values_are_taken_as_typed_outside_sweeps():
    argv = quote_string_values("index", ["input.path=/d", "index.path=/i", "index.factory=IVF256,Flat"])
    assert compose("index", argv).index.factory == "IVF256,Flat"
    argv = quote_string_values("path", ["index.path=/i", "start=abc#0", "end=it's [x]"])
    assert (compose("path", argv).start, compose("path", argv).end) == ("abc#0", "it's [x]")
    assert quote_string_values("index", ["-m", "index.factory=Flat,HNSW32"])[1] == "index.factory=Flat,HNSW32"
    assert quote_string_values("index", ["index.factory='IVF8,Flat'"]) == ["index.factory='IVF8,Flat'"]
    # a list of strings is not a string key: its brackets stay Hydra's list syntax
    argv = ["index.path=/i", "cors.origins=[https://a.example,https://b.example]"]
    assert compose("serve", quote_string_values("serve", argv)).cors.origins == [
        "https://a.example",
        "https://b.example",
    ]


def test_cli_takes_an_id_with_a_hash_and_shows_the_quoted_form_where_it_cannot(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pipeline.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    done = cli("path", f"index.path={tmp_path}", "from=abc#0", "to=b")
    assert done.returncode == 2 and "not an index directory" in done.stderr  # reached the command: parsed
    done = cli("index", "input.path=/d", "index.path=/i", "batch_size=a#b")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "quote it: 'batch_size=\"a#b\"'" in done.stderr


def test_ray_refuses_at_once_under_an_address_space_limit_it_cannot_fit_in():
    code = textwrap.dedent(
        """
        import resource
        from pipeline.config import RayConfig
        from pipeline.errors import LatentError
        from pipeline.runtime import _object_store_size, address_space_room
        limit, left = address_space_room() or (0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (limit or 2**62, resource.RLIM_INFINITY))
        print(_object_store_size(RayConfig()) == left // 4 > 0, flush=True)
        print(_object_store_size(RayConfig(object_store_memory=123)))
        used = limit - left
        resource.setrlimit(resource.RLIMIT_AS, (used + 200 * 2**20, resource.RLIM_INFINITY))
        try:
            _object_store_size(RayConfig())
        except LatentError as err:
            print(err)
        """
    )
    pre = "import resource; resource.setrlimit(resource.RLIMIT_AS, (8_000_000 * 1024, resource.RLIM_INFINITY))\n"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=120, env=env)
    lines = done.stdout.splitlines()
    assert lines[:2] == ["True", "123"], done.stdout + done.stderr
    assert "address-space limit (ulimit -v" in lines[2] and "ray.object_store_memory" in lines[2]
