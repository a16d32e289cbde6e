"""Bundles that survive deployment: a copied bundle (new modification times) is hashed at its first start on
a machine, not at every one (bundle/verified.py); a bundle exported with --no-validate is refused until it
is validated (`stdtrt validate`) or run with --trust-unvalidated; the cache key holds the prompt by its token
ids, not by the text encoder's float output."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import export_tiny, make_video

from stdtrt.bundle import verified
from stdtrt.bundle.manifest import read_bundle
from stdtrt.config import ExportConfig, StylizeConfig
from stdtrt.errors import StdtrtError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _copy(src, dst):
    """As cp or rsync without -a, or a download: the same bytes, new modification times."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    return dst


def test_a_copied_bundle_is_hashed_at_its_first_start_here_only(sd_bundle, tmp_path):
    files = len(read_bundle(sd_bundle[1].path, verify=False).manifest.files)
    assert read_bundle(sd_bundle[1].path, verify=False).verify() == 0  # where it was exported
    copy = _copy(sd_bundle[1].path, tmp_path / "copy")
    assert read_bundle(copy, verify=False).verify() == files  # first start: every file hashed
    assert read_bundle(copy, verify=False).verify() == 0  # then: the record of this machine
    assert read_bundle(copy, verify=False).verify(full=True) == files  # --verify still hashes all
    elsewhere = _copy(copy, tmp_path / "elsewhere")  # another path: its own first start
    assert read_bundle(elsewhere, verify=False).verify() == files
    onnx = copy / "unet.onnx"
    os.utime(onnx, ns=(onnx.stat().st_atime_ns, onnx.stat().st_mtime_ns + 10**9))  # touched
    assert read_bundle(copy, verify=False).verify() == 1
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1  # the same size, other bytes, a new time
    onnx.write_bytes(bytes(data))
    with pytest.raises(StdtrtError, match="unet.onnx does not match the sha256"):
        read_bundle(copy)


def test_the_record_holds_for_one_path_stamp_and_digest_only(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    key, stamp = verified.file_key(f), verified.file_stamp(f)
    verified.remember(key, stamp, "d1")
    assert verified.known(key, stamp, "d1")
    assert not verified.known(key, stamp, "d2")  # another manifest's hash for the same file
    assert not verified.known(key, [stamp[0], stamp[1] + 1], "d1")  # touched since
    assert not verified.known(verified.file_key(tmp_path / "b.bin"), stamp, "d1")


def test_a_changed_model_folder_is_hashed_once_then_known(tmp_path):
    """The torch backend's check of a bundle's model (bundle/model._unchanged): files whose times changed
    (copied, restored from a backup) are hashed once; afterwards the record answers."""
    from stdtrt.bundle.model import _unchanged, fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"w" * 100)
    recorded = {"fingerprint": fingerprint(str(folder)), "hash": "h"}
    hashed = []

    def digest():
        hashed.append(1)
        return "h"

    _unchanged("the model", str(folder), recorded, digest, False, None)
    assert hashed == []  # as exported
    w = folder / "weights.bin"
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    _unchanged("the model", str(folder), recorded, digest, False, None)
    _unchanged("the model", str(folder), recorded, digest, False, None)
    assert hashed == [1]
    with pytest.raises(StdtrtError, match="hash differs"):
        _unchanged("the model", str(folder), recorded, lambda: "other", True, type("B", (), {"path": "b"}))


def test_an_unvalidated_bundle_is_refused_until_validated_in_place(tmp_path, capsys):
    from stdtrt.cli import main
    from stdtrt.runtime.stylize import stylize_video

    _, result = export_tiny(tmp_path, "tiny-sd", 1.0, nfe=2, validate=False)
    bundle = read_bundle(result.path)
    assert not bundle.validated and result.table is None
    graphs = {n: e["sha256"] for n, e in bundle.manifest.files.items()}
    video = make_video(tmp_path / "in.mp4", frames=3, size=(64, 64), audio=False)
    with pytest.raises(SystemExit) as done:
        main(["stylize-video", str(video), "-o", str(tmp_path / "out.mp4"), "--bundle", str(result.path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1
    assert (
        "--no-validate" in err[0]
        and f"stdtrt validate {result.path}" in err[0]
        and "--trust-unvalidated" in err[0]
    )
    out = stylize_video(StylizeConfig(bundle=str(result.path), trust_unvalidated=True), video, tmp_path / "t.mp4",
                        progress=False)  # fmt: skip
    assert out.frames == 3

    main(["validate", str(result.path)])
    assert "validation against torch" in capsys.readouterr().out
    bundle = read_bundle(result.path)
    assert bundle.validated and all(r["ok"] for r in bundle.manifest.validation["rows"])
    assert {n: e["sha256"] for n, e in bundle.manifest.files.items() if n in graphs} == graphs  # kept
    assert (result.path / "validation.txt").is_file()
    stylize_video(StylizeConfig(bundle=str(result.path)), video, tmp_path / "v.mp4", progress=False)
    main(["validate", str(result.path)])  # nothing left to do
    assert "nothing to do" in capsys.readouterr().out


def test_the_prompt_is_keyed_by_its_token_ids_not_the_text_encoder_s_floats():
    """Another CPU's text encoder output differs in the last bits; the key must not (the encoder's
    weights are in the model hash). Another prompt, and a negative prompt baked in by guidance, count."""
    from stdtrt.bundle.model import conditioning_hash
    from stdtrt.models.conditioning import encode_prompt
    from stdtrt.models.load import load_model

    for preset in ("tiny-sd", "tiny-sdxl"):
        model = load_model(preset)
        cfg = ExportConfig(model=preset, prompt="an oil painting")
        key = conditioning_hash(model, cfg, 64, 64)
        before = encode_prompt(model.pipe, cfg.prompt, 64, 64).embeds
        with torch.no_grad():
            for p in model.pipe.text_encoder.parameters():
                p.mul_(1 + 1e-6)  # rounding of another machine
        assert not torch.equal(encode_prompt(model.pipe, cfg.prompt, 64, 64).embeds, before)
        assert conditioning_hash(model, cfg, 64, 64) == key
        assert conditioning_hash(model, ExportConfig(model=preset, prompt="ink"), 64, 64) != key
        neg = ExportConfig(model=preset, prompt="an oil painting", negative_prompt="blurry")
        assert conditioning_hash(model, neg, 64, 64) == key  # guidance 1: the negative prompt is not baked
        cfg_neg = ExportConfig(model=preset, prompt="an oil painting", negative_prompt="blurry", guidance=3.0)
        assert conditioning_hash(model, cfg_neg, 64, 64) != conditioning_hash(
            model, ExportConfig(model=preset, prompt="an oil painting", guidance=3.0), 64, 64
        )
