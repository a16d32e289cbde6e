"""The bundle manifest: the cache key moves with every input it depends on, a manifest round-trips, and a
bundle whose files changed after export is refused."""

import json

import pytest
from conftest import copy_bundle

from stdtrt.bundle import manifest as mf
from stdtrt.errors import StdtrtError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

BASE = dict(
    model_hash="a" * 64, lora_hash="b" * 64, prompt="oil", negative_prompt="", eta=0.75, nfe=4, guidance=1.0,
    width=512, height=512, batch=1, precision="fp16", opset=18, plan={"timesteps": [779, 599, 399, 219]},
    conditioning_hash="d" * 64, placement={"unet": "fp16", "vae": "fp16"}, vae={"spec": "full", "hash": None},
)  # fmt: skip
CHANGED = dict(
    model_hash="c" * 64, lora_hash=None, prompt="ink", eta=0.65, nfe=8, guidance=3.0, width=576, height=448,
    batch=2, precision="fp32", opset=19, plan={"timesteps": [759, 599, 399, 219]}, conditioning_hash="e" * 64,
    placement={"unet": "fp16", "vae": "fp32"}, vae={"spec": "tiny", "hash": "f" * 64},
)  # fmt: skip


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_cache_key_changes_with_every_input(field):
    base = mf.cache_key(mf.onnx_key_fields(**BASE))
    assert mf.cache_key(mf.onnx_key_fields(**{**BASE, field: CHANGED[field]})) != base
    assert mf.cache_key(mf.onnx_key_fields(**BASE)) == base  # and only then


def test_negative_prompt_counts_only_when_guidance_bakes_it_in():
    key = lambda **kw: mf.cache_key(mf.onnx_key_fields(**{**BASE, **kw}))  # noqa: E731
    assert key(negative_prompt="blurry") == key()  # guidance 1: no unconditional branch in the graph
    assert key(guidance=3.0, negative_prompt="blurry") != key(guidance=3.0)


def test_tensorrt_key_depends_on_graphs_version_and_gpu():
    k = mf.tensorrt_key("k", "10.3.0", "sm_90")
    assert len({k, mf.tensorrt_key("k", "10.4.0", "sm_90"), mf.tensorrt_key("k", "10.3.0", "sm_89"),
                mf.tensorrt_key("j", "10.3.0", "sm_90")}) == 4  # fmt: skip


def test_manifest_round_trip_and_plan(sd_bundle, tmp_path):
    _, result = sd_bundle
    bundle = mf.read_bundle(result.path)
    copy = tmp_path / "copy"
    copy.mkdir()
    mf.write_manifest(copy, bundle.manifest)
    assert (copy / "manifest.json").read_text() == (result.path / "manifest.json").read_text()  # as exported
    assert mf.read_bundle(copy, verify=False).manifest == bundle.manifest
    plan = bundle.plan()  # as recorded, not recomputed
    assert plan.timesteps == (779, 599, 399, 219) and plan.targets[-1] == 0 and plan.gamma == 0.0
    assert plan.a_start == bundle.manifest.schedule["a_start"] and len(plan.a_s) == 4
    assert bundle.latent_shape == (4, 8, 8) and (bundle.width, bundle.height) == (64, 64)


def test_a_changed_file_is_refused(sd_bundle, tmp_path):
    path = copy_bundle(sd_bundle, tmp_path)
    data = bytearray((path / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights, same size
    (path / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(StdtrtError, match="unet.onnx does not match the sha256"):
        mf.read_bundle(path)
    assert mf.read_bundle(path, verify=False).nfe == 4


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda p: (p / "vae_decoder.onnx").unlink(), "missing vae_decoder.onnx"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "manifest.json").unlink(), "not an stdtrt bundle"),
        (lambda p: _edit(p, format_version=99), "format version 99"),
        (lambda p: _edit(p, graphs=None, files=None), "lacks graphs, files"),
        (lambda p: _edit(p, colour="red"), r"fields this stdtrt does not know \(colour\)"),
    ],
)
def test_damaged_bundles_are_refused_with_one_line(damage, match, sd_bundle, tmp_path):
    path = copy_bundle(sd_bundle, tmp_path)
    damage(path)
    with pytest.raises(StdtrtError, match=match) as err:
        mf.read_bundle(path)
    assert "\n" not in str(err.value)


def _edit(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            m.pop(key)
        else:
            m[key] = value
    (path / "manifest.json").write_text(json.dumps(m))


def test_missing_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(StdtrtError, match="stdtrt export"):
        mf.read_bundle(tmp_path / "nothing")


def test_a_normal_start_hashes_nothing_and_a_changed_file_is_still_refused(sd_bundle, tmp_path):
    """Hashes are taken at export; a load compares sizes and times and hashes only a file that changed
    (copied or touched: hashed, and accepted when its content is the same). --verify hashes every file,
    and catches even a change that kept the size and the time."""
    import os

    path = copy_bundle(sd_bundle, tmp_path)  # copytree keeps the times
    bundle = mf.read_bundle(path, verify=False)
    assert bundle.verify() == 0 and bundle.verify(full=True) == len(bundle.manifest.files)
    unet = path / "unet.onnx"
    stat = unet.stat()
    os.utime(unet, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes
    assert bundle.verify() == 1
    data = bytearray(unet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    unet.write_bytes(bytes(data))
    os.utime(unet, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the size and the time as exported
    assert bundle.verify() == 0  # what the cheap check cannot see ...
    with pytest.raises(StdtrtError, match="unet.onnx does not match the sha256"):
        bundle.verify(full=True)  # ... --verify does
    unet.write_bytes(bytes(data[:-1]))
    with pytest.raises(StdtrtError, match="unet.onnx has .* bytes, its manifest"):
        bundle.verify()


def test_the_torch_backend_checks_the_model_by_its_files_first(sd_bundle):
    """The model, VAE and LoRA a bundle's torch backend rebuilds are fingerprinted at export (sizes and
    times of their files): a start that finds them unchanged hashes no weights; presets are hashed."""
    from stdtrt.bundle.model import fingerprint

    m = mf.read_bundle(sd_bundle[1].path).manifest
    assert m.model["fingerprint"] is None  # tiny-sd: a preset, built from code
    lora = m.lora
    assert lora["fingerprint"] == fingerprint(lora["path"]) and len(lora["fingerprint"]) == 1


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["schedule"].__setitem__("a_start", m["schedule"]["a_start"] * 0.9),  # changes the output
        lambda m: m.__setitem__("width", 128),  # the graphs were built for 64
        lambda m: m.__setitem__("prompt", "a watercolour"),  # the graph's constants say otherwise
    ],
)
def test_a_hand_edited_manifest_is_refused_with_one_line(edit, sd_bundle, tmp_path):
    path = copy_bundle(sd_bundle, tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(StdtrtError, match="was changed after export") as err:
        mf.read_bundle(path)
    assert "\n" not in str(err.value)
    mf.write_manifest(path, mf.read_bundle(sd_bundle[1].path).manifest)
    assert mf.read_bundle(path).width == 64  # the manifest as exported reads again
