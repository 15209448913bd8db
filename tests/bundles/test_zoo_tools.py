# Copyright (c) svreg-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Model-zoo tooling of the brain_mri_svreg bundle: ``python -m monai.bundle verify_metadata``,
``verify_net_in_out``, ``ckpt_export``, ``onnx_export`` and ``download``, and ``python -m svreg_monai.apps.bundle_tools
pack``."""

from __future__ import annotations

import csv
import functools
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import svreg_monai
from svreg_monai.apps.bundle_tools import bundle_files, bundle_version, main, pack_bundle
from svreg_monai.networks import DDFOnly, TransMorphTVFSPR

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brain_mri_svreg"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
# the shipped network (configs/inference.json defaults)
SHIPPED = {"img_size": (96, 96, 96), "embed_dim": 48, "depths": (2, 2, 2), "num_heads": (4, 4, 4), "time_steps": 7}
# a small network with shifted-window blocks (depth 2) for the export tests, built for 64^3
SMALL = {"img_size": (64, 64, 64), "embed_dim": 12, "depths": (2, 2, 2), "num_heads": (2, 2, 2), "time_steps": 2}
SMALL_ARGS = [
    "--image_size", "[64,64,64]",
    "--embed_dim", "12",
    "--depths", "[2,2,2]",
    "--num_heads", "[2,2,2]",
    "--time_steps", "2",
]  # fmt: skip
# packages a config may use without a pin: MONAI and what MONAI itself requires
UNPINNED_OK = {"monai", "torch", "numpy"}
# packages the configs need without naming them: image reading, demo data, TensorBoard, figures, CLI, progress bar
IMPLICIT = {"nibabel", "nilearn", "tensorboard", "matplotlib", "fire", "tqdm"}
pytest.importorskip("fire", reason="monai.bundle's command line needs `fire` (pip install svreg-monai[bundle])")


def bundle_cli(*args: str, cwd: Path = BUNDLE, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore", "NO_PROXY": "127.0.0.1,localhost"}
    env["no_proxy"] = env["NO_PROXY"]
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[:2]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- metadata


def test_verify_metadata_against_the_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"the MONAI metadata schema is not available offline at {SCHEMA}")
    proc = bundle_cli(
        "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
        "--filepath", str(SCHEMA), "--hash_val", SCHEMA_MD5,
    )  # fmt: skip
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_version_changelog_and_versions():
    meta = load_json(CONFIGS / "metadata.json")
    assert meta["version"] in meta["changelog"]
    assert next(iter(meta["changelog"])) == meta["version"]  # newest entry first
    assert bundle_version(BUNDLE) == meta["version"]
    assert meta["required_packages_version"]["svreg-monai"] == svreg_monai.__version__
    for key in ("monai_version", "pytorch_version", "numpy_version", *meta["required_packages_version"].values()):
        value = meta.get(key, key)
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", value), f"{key}: {value!r} is not a plain version"


def _config_modules(node: object) -> set[str]:
    """Top-level modules named by ``_target_`` values and ``$import``/``$from`` expressions of a config."""
    found: set[str] = set()
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and "." in target:
            found.add(target.split(".")[0])
        elif isinstance(target, str):
            found.add("monai")  # a bare component name is looked up in MONAI
        for value in node.values():
            found |= _config_modules(value)
    elif isinstance(node, list):
        for value in node:
            found |= _config_modules(value)
    elif isinstance(node, str) and node.startswith("$"):
        for match in re.finditer(r"\b(?:import|from)\s+([A-Za-z_]\w*)", node[1:]):
            found.add(match.group(1))
    return found


def test_non_monai_imports_of_the_configs_are_pinned():
    meta = load_json(CONFIGS / "metadata.json")
    pinned = {re.sub(r"[-_.]+", "-", name).lower() for name in meta["required_packages_version"]}
    distributions = importlib.metadata.packages_distributions()
    modules: set[str] = set()
    for path in sorted(CONFIGS.glob("*.json")):
        if path.name != "metadata.json":
            modules |= _config_modules(load_json(path))
    assert {"svreg_monai", "ignite", "torch", "monai", "os"} <= modules
    unpinned = []
    for module in sorted(modules):
        if module in sys.stdlib_module_names:
            continue
        names = distributions.get(module)
        assert names, f"module {module!r} used by the configs is not installed"
        dist = re.sub(r"[-_.]+", "-", names[0]).lower()
        if dist not in UNPINNED_OK and dist not in pinned:
            unpinned.append(f"{module} ({names[0]})")
    assert not unpinned, f"configs import packages missing from required_packages_version: {unpinned}"
    assert pinned >= IMPLICIT, f"implicit runtime packages not pinned: {sorted(IMPLICIT - pinned)}"


# --------------------------------------------------------------------------------------------- network in/out


@pytest.mark.parametrize("n", [1, 2])
def test_verify_net_in_out(n):
    proc = bundle_cli(
        "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json", "--n", str(n),
    )  # fmt: skip
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_network_def_is_the_ddf_wrapper_of_the_inference_network():
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import _get_fake_spatial_shape

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, DDFOnly) and isinstance(net.net, TransMorphTVFSPR)
    assert parser.get_parsed_content("network") is net.net  # inference runs the full TM-SPR inside network_def
    fmt = parser["_meta_"]["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 2 and fmt["outputs"]["pred"]["num_channels"] == 3
    net.eval()
    for n in (1, 2):
        shape = _get_fake_spatial_shape(fmt["inputs"]["image"]["spatial_shape"], n=n)
        assert shape == (32 * n,) * 3
        with torch.no_grad():
            out = net(torch.rand(1, 2, *shape))
        assert out.shape == (1, 3, *_get_fake_spatial_shape(fmt["outputs"]["pred"]["spatial_shape"], n=n))


# -------------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A random plain TM-SPR state dict (the format of models/model.pt) and the eager wrapper holding it."""
    torch.manual_seed(0)
    net = TransMorphTVFSPR(**SMALL)
    with torch.no_grad():  # displacements of a few voxels rather than the ~1e-4 of the reference init
        for head in net.velocity_heads:
            head.conv.weight.normal_(0.0, 0.05)
            head.conv.bias.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    torch.save(net.state_dict(), path)
    return path, DDFOnly(net).eval()


def smooth_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool3d(torch.rand(shape, generator=g), 5, 1, 2)


def test_ckpt_export_torchscript_matches_eager(small_checkpoint, tmp_path):
    from monai.data import load_net_with_metadata

    ckpt, eager = small_checkpoint
    out = tmp_path / "model.ts"
    bundle_cli(
        "monai.bundle", "ckpt_export", "network_def", "--filepath", str(out), "--ckpt_file", str(ckpt),
        "--ckpt_dir", str(ckpt.parent),  # the trained window is read from <ckpt_dir>/model.pt
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
        "--use_trace", "True", "--input_shape", "[1,2,64,64,64]", *SMALL_ARGS,
    )  # fmt: skip
    ts, meta, extra = load_net_with_metadata(str(out), map_location="cpu", more_extra_files=["inference.json"])
    assert meta["version"] == load_json(CONFIGS / "metadata.json")["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "svreg_monai.networks.nets.DDFOnly"
    # the export size, and (the trace follows the input size) a size whose Swin maps need window padding, batch 2
    for shape in ((1, 2, 64, 64, 64), (2, 2, 96, 64, 32)):
        image = smooth_input(shape)
        with torch.no_grad():
            expected = eager(image)
            assert expected.abs().max() > 0.5  # a non-trivial field
            torch.testing.assert_close(ts(image), expected, rtol=0, atol=1e-4)


def test_onnx_export_matches_eager(small_checkpoint, tmp_path):
    pytest.importorskip("onnx", reason="onnx_export needs `onnx` (pip install onnx)")
    ort = pytest.importorskip("onnxruntime", reason="running the ONNX model needs `onnxruntime`")
    ckpt, eager = small_checkpoint
    out = tmp_path / "model.onnx"
    bundle_cli(
        "monai.bundle", "onnx_export", "network_def", "--filepath", str(out), "--ckpt_file", str(ckpt),
        "--ckpt_dir", str(ckpt.parent),  # the trained window is read from <ckpt_dir>/model.pt
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
        "--use_trace", "True", "--input_shape", "[1,2,64,64,64]", *SMALL_ARGS,
        "--converter_kwargs", "{'dynamo': False, 'input_names': ['image'], 'output_names': ['pred']}",
    )  # fmt: skip
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["pred"]
    image = smooth_input((1, 2, 64, 64, 64))
    with torch.no_grad():
        expected = eager(image).numpy()
    np.testing.assert_allclose(session.run(None, {"image": image.numpy()})[0], expected, rtol=0, atol=1e-4)


def test_onnx_export_at_a_size_with_padded_windows(small_checkpoint, tmp_path):
    """ONNX models are static-shaped; exporting at another size (Swin windows padded there) works too."""
    pytest.importorskip("onnx", reason="onnx_export needs `onnx` (pip install onnx)")
    ort = pytest.importorskip("onnxruntime", reason="running the ONNX model needs `onnxruntime`")
    from monai.networks.utils import convert_to_onnx

    _, eager = small_checkpoint
    image = smooth_input((1, 2, 96, 64, 32), seed=1)
    out = tmp_path / "other_size.onnx"
    convert_to_onnx(eager, [image], filename=str(out), use_trace=True, dynamo=False, input_names=["image"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = eager(image).numpy()
    np.testing.assert_allclose(session.run(None, {"image": image.numpy()})[0], expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------ pack and download


def test_pack_layout_exclusions_and_errors(tmp_path):
    root = tmp_path / "brain_mri_svreg"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("data", "logs", "eval", "*.pt", "__pycache__"))
    (root / "models" / "model.pt").write_bytes(b"weights")
    junk = [
        "data/demo/datalist.json", "logs/events.out.tfevents.1", "eval/metrics.csv", "models/checkpoint_epoch=3.pt",
        "models/hyper/checkpoint_epoch=1.pt", "configs/__pycache__/x.pyc", ".pytest_cache/v",
        "models/.model.pt.tmp-1-a.pt",
    ]  # fmt: skip
    for rel in junk:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    version = load_json(root / "configs" / "metadata.json")["version"]
    assert main(["pack", str(root), "--output", str(tmp_path / "dist")]) == 0
    archive = tmp_path / "dist" / f"brain_mri_svreg_v{version}.zip"
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [archive.name]  # no temporary file left
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        assert z.read("brain_mri_svreg/models/model.pt") == b"weights"
    assert all(n.startswith("brain_mri_svreg/") for n in names)
    expected = {f"brain_mri_svreg/{p.as_posix()}" for p in bundle_files(root)}
    assert set(names) == expected
    for rel in ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE", "models/model.pt"):
        assert f"brain_mri_svreg/{rel}" in names
    assert not [n for n in names for j in junk if n.endswith(j)]
    # the same files give the same archive
    first = archive.read_bytes()
    pack_bundle(root, tmp_path / "dist")
    assert archive.read_bytes() == first

    (root / "LICENSE").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks the model-zoo files \['LICENSE'\]"):
        pack_bundle(root, tmp_path / "dist")
    assert main(["pack", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 1
    meta = load_json(BUNDLE / "configs" / "metadata.json")
    meta["version"] = "9.9.9"
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"version '9\.9\.9' .* has no entry in its 'changelog'"):
        bundle_version(root)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served_zip(tmp_path):
    """The packed bundle (shipped weights included) served over HTTP on 127.0.0.1."""
    dist = tmp_path / "dist"
    proc = bundle_cli("svreg_monai.apps.bundle_tools", "pack", str(BUNDLE), "--output", str(dist), cwd=tmp_path)
    archive = Path(proc.stdout.strip().splitlines()[-1])
    assert archive.parent == dist and archive.is_file()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(dist)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_then_infer_and_load(served_zip, tmp_path):
    version = load_json(CONFIGS / "metadata.json")["version"]
    downloads = tmp_path / "downloads"
    bundle_cli(
        "monai.bundle", "download", "--name", "brain_mri_svreg", "--version", version, "--url", served_zip,
        "--bundle_dir", str(downloads), "--progress", "False", cwd=tmp_path,
    )  # fmt: skip
    root = downloads / "brain_mri_svreg"
    assert (root / "models" / "model.pt").read_bytes() == (BUNDLE / "models" / "model.pt").read_bytes()
    assert not (root / "data").exists() and not (root / "eval").exists()

    # inference with the shipped weights from the downloaded copy, started in an unrelated empty folder
    work = tmp_path / "work"
    work.mkdir()
    bundle_cli(
        "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.json"),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--logging_file", str(root / "configs" / "logging.conf"),
        "--bundle_root", str(root), "--demo_subjects", "5", cwd=work,
    )  # fmt: skip
    assert not list(work.iterdir())  # everything went into the bundle folder
    with open(root / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["pair"] for r in rows][-2:] == ["identity", "mean"] and len(rows) == 4
    assert all(0.0 < float(r["dice_mean"]) <= 1.0 for r in rows)

    # monai.bundle.load: network_def of configs/<workflow_type>.json with the weights of the downloaded bundle
    from monai.bundle import load

    net = load(
        name="brain_mri_svreg", version=version, bundle_dir=str(downloads), source="github",
        workflow_type="inference", device="cpu", progress=False,
    )  # fmt: skip
    assert isinstance(net, DDFOnly)
    reference = TransMorphTVFSPR(**SHIPPED)
    reference.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    image = smooth_input((1, 2, 96, 96, 96))
    net.eval()
    reference.eval()
    with torch.no_grad():
        ddf = net(image)
        assert ddf.shape == (1, 3, 96, 96, 96)
        torch.testing.assert_close(ddf, reference(image[:, :1], image[:, 1:]).ddf, rtol=0, atol=1e-5)
