"""The stream form: one UNet call per group of B frames gives every frame exactly its NFE sequential
student steps (torch and onnxruntime, SD and SDXL with CFG, B = 1 and B = 3), frames leave in order, the end
flushes the pipe, and the pipeline's stages give the same frames whether they run in one thread or overlap."""

import numpy as np
import pytest
import torch

from stdtrt import schedule
from stdtrt.bundle.manifest import read_bundle
from stdtrt.bundle.model import load_fused_model
from stdtrt.errors import StdtrtError
from stdtrt.io.samples import sample_frames
from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from stdtrt.runtime.backends.torch import TorchBackend
from stdtrt.runtime.pipeline import compose, run_pipeline
from stdtrt.runtime.stream import StreamRunner, StreamState
from stdtrt.runtime.student import Student, to_tensor
from stdtrt.schedule import make_noise

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# Stream (NFE slots in one batched call) vs sequential (one call per step): fp32 rounding only.
TOLERANCE = 1e-4


def _frames(n: int, size: int = 64) -> list[np.ndarray]:
    return list(sample_frames(n, size, size))


def _stream(backend, z0s: list[torch.Tensor], noise) -> tuple[list[torch.Tensor], list, int]:
    """Push groups of B content latents (B, 4, h, w) with tags; collect what leaves, in order."""
    state = StreamState(backend, noise)
    done = []
    for i, z0 in enumerate(z0s):
        done += state.push(z0, [(i, j) for j in range(z0.shape[0])])
    done += state.flush()
    return [z for z, _ in done], [tags for _, tags in done], state.calls


def _close(ours, ref) -> bool:
    return float((ours - ref).abs().max()) < TOLERANCE * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("fixture", ["sd_bundle", "sdxl_bundle"])
@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_stream_equals_sequential_student_steps(kind, fixture, request):
    bundle = read_bundle(request.getfixturevalue(fixture)[1].path)
    m = bundle.manifest
    model = load_fused_model(bundle, "cpu")
    backend = (
        OnnxRuntimeBackend(bundle, "cpu")
        if kind == "onnxruntime"
        else TorchBackend.from_bundle(bundle, "cpu", model)
    )
    student = Student(model, bundle.plan(), m.prompt, 64, 64, m.negative_prompt, m.guidance)
    noise = make_noise(bundle.latent_shape, seed=3)
    z0s = [student.encode(to_tensor(f[None], "cpu")) for f in _frames(5)]
    latents, tags, calls = _stream(backend, z0s, lambda n: noise.expand(n, -1, -1, -1))
    assert tags == [[(i, 0)] for i in range(5)] and calls == 5 + bundle.nfe - 1  # in order; + flush
    for z0, ours in zip(z0s, latents, strict=True):
        assert _close(ours, student.sample(z0, noise))  # NFE sequential steps on that frame alone
    assert (latents[0] - latents[1]).abs().max() > 1e-2  # different frames, different results


@pytest.mark.parametrize("nfe", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_stream_for_any_nfe_and_frames_per_step_with_fresh_noise(nfe, batch, tiny_sd):
    plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, nfe)
    backend = TorchBackend.from_model(tiny_sd, plan, "ink", "", 1.0, 64, 64, batch)
    assert backend.batch == batch
    student = Student(tiny_sd, plan, "ink", 64, 64)
    g = torch.Generator().manual_seed(0)
    z0s = [torch.randn(batch, 4, 8, 8, generator=g) for _ in range(4)]
    noises = [torch.randn(batch, 4, 8, 8, generator=g) for _ in range(4)]
    feed = iter(noises)
    latents, tags, calls = _stream(backend, z0s, lambda n: next(feed))  # new noise for every frame
    assert tags == [[(i, j) for j in range(batch)] for i in range(4)] and calls == 4 + nfe - 1
    for z0, n, ours in zip(z0s, noises, latents, strict=True):
        assert ours.shape == (batch, 4, 8, 8) and _close(ours, student.sample(z0, n))


def test_the_step_graph_module_is_x_start_jump_and_shift(tiny_sd):
    """StreamUNet by hand: slot 0's input is replaced by x_start(z0, noise), every slot jumps one step,
    the last slot leaves, the others move down one slot."""
    plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, 3)
    backend = TorchBackend.from_model(tiny_sd, plan, "ink", "", 1.0, 64, 64, 2)
    student = Student(tiny_sd, plan, "ink", 64, 64)
    g = torch.Generator().manual_seed(1)
    slots, z0, noise = (
        torch.randn(6, 4, 8, 8, generator=g),
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 4, 8, 8, generator=g),
    )
    slots_next, done = backend.step(slots, z0, noise)
    x0 = plan.a_start * z0 + plan.b_start * noise
    assert _close(slots_next[2:4], student.step(x0, 0)) and _close(
        slots_next[4:6], student.step(slots[2:4], 1)
    )
    assert _close(done, student.step(slots[4:6], 2)) and torch.equal(slots_next[:2], torch.zeros(2, 4, 8, 8))


def test_gamma_is_refused_by_the_stream_form(tiny_sd):
    plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, 4, gamma=0.3)
    with pytest.raises(StdtrtError, match="gamma = 0"):
        TorchBackend.from_model(tiny_sd, plan, "ink", "", 1.0, 64, 64)


@pytest.mark.parametrize("batch", [1, 4])
def test_stage_threads_give_the_same_frames_in_order_on_the_cpu_where_lanes_do_nothing(tiny_sd, batch):
    """Threads or one thread, B = 1 or 4 (a short last group is padded and the padding dropped): the
    same frames, in order, each as it comes out alone. On the CPU a Lane is a no-op (no CUDA stream, no
    event): the lanes themselves are checked on a GPU (tests/test_gpu.py, benchmarks/gpu_check.py)."""
    plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, 4)
    backend = TorchBackend.from_model(tiny_sd, plan, "ink", "", 1.0, 64, 64, batch)
    items = [(f, i) for i, f in enumerate(_frames(6))]
    results = {}
    for concurrent in (False, True):
        backend.concurrent_stages = concurrent
        runner = StreamRunner(backend, seed=1)
        assert len(runner.stages()) == (3 if concurrent else 1)
        out = []
        run_pipeline(iter(items), runner.stages(), out.append, queue_size=2)
        results[concurrent] = out
    assert [t for _, t in results[True]] == list(range(6)) == [t for _, t in results[False]]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(results[True], results[False], strict=True))
    single = StreamRunner(backend, seed=1)(items[2][0])  # an image: fill and flush for one frame
    assert np.abs(single.astype(int) - results[True][2][0].astype(int)).max() <= 1


def test_a_failing_stage_stops_the_pipeline_and_raises():
    def boom(items):
        for i, item in enumerate(items):
            if i == 3:
                raise ValueError("stage failed")
            yield item

    seen = []
    with pytest.raises(ValueError, match="stage failed"):
        run_pipeline(iter(range(1000)), [boom, compose([lambda xs: (x * 2 for x in xs)])], seen.append, 2)
    assert seen == [0, 2, 4][: len(seen)]


# -- the similarity filter ---------------------------------------------------------------------------------
def _run_stages(runner, frames):
    return list(
        compose([runner.encode, runner.unet, runner.decode])(iter((f, i) for i, f in enumerate(frames)))
    )


@pytest.mark.parametrize("nfe,batch", [(4, 1), (1, 1), (2, 3)])
def test_similar_frames_reuse_the_last_output_in_order(tiny_sd, nfe, batch):
    """A still stretch: its frames reuse the output of the last frame that went through the networks,
    whether that frame is still in the pipe, in the group being built, or already left (NFE 1)."""
    plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, nfe)
    backend = TorchBackend.from_model(tiny_sd, plan, "ink", "", 1.0, 64, 64, batch)
    moving = _frames(8)
    frames = moving[:3] + [moving[3]] * 4 + moving[4:]  # frames 3..6 are one still picture
    plain = _run_stages(StreamRunner(backend, seed=1), frames)
    runner = StreamRunner(backend, seed=1, skip_threshold=0.999)
    filtered = _run_stages(runner, frames)
    assert [t for _, t in filtered] == list(range(len(frames))) == [t for _, t in plain]
    assert runner.skipped == 3  # frames 4, 5, 6
    for i, ((ours, _), (ref, _)) in enumerate(zip(filtered, plain, strict=True)):
        want = plain[3][0] if 3 <= i <= 6 else ref  # the still frames: frame 3's output
        assert np.array_equal(ours, want), i
    assert not np.array_equal(filtered[6][0], plain[7][0])  # and the filter stopped when the scene moved


def test_the_filter_is_deterministic_and_capped():
    from stdtrt.runtime.similarity import SimilarityFilter

    frame = _frames(1)[0]
    f = SimilarityFilter(0.0, max_skips=3)  # threshold 0: every frame may reuse, the cap decides
    assert [f.skip(frame) for _ in range(9)] == [False, True, True, True, False, True, True, True, False]
    g = SimilarityFilter(None)
    assert not any(g.skip(frame) for _ in range(3)) and g.skipped == 0
    a, b = _frames(2)
    assert SimilarityFilter.similarity(SimilarityFilter.small(a), SimilarityFilter.small(a)) == pytest.approx(
        1.0
    )
    assert SimilarityFilter.similarity(SimilarityFilter.small(a), SimilarityFilter.small(b)) < 0.999
    bright = np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)  # the same picture, brighter: alike
    assert SimilarityFilter.similarity(SimilarityFilter.small(a), SimilarityFilter.small(bright)) > 0.99


def test_the_filter_threshold_is_checked():
    from stdtrt.config import StylizeConfig

    for bad in ({"skip_threshold": 1.5}, {"skip_threshold": -0.1}, {"max_skips": 0}):
        with pytest.raises(StdtrtError, match="skip-threshold|max-skips"):
            StylizeConfig(**bad)


def test_a_brightness_ramp_and_a_contrast_change_do_not_count_as_change():
    """The README's promise: brightness and contrast changes do not count. A dark picture brightened by 12
    levels a frame (nothing clips), then with its contrast raised: the filter reuses one output for all of
    them, while the plain cosine of the grey copies (without the mean removed) falls to 0.91 over the ramp;
    another picture still counts."""
    from stdtrt.runtime.similarity import SimilarityFilter

    a, b = _frames(2)
    dark = (a.astype(float) * 0.25).astype(np.uint8)  # levels 0..64
    ramp = [(dark.astype(int) + 12 * i).astype(np.uint8) for i in range(12)]
    mean = float(dark.mean())
    contrast = np.clip(mean + 1.5 * (dark.astype(float) - mean), 0, 255).astype(np.uint8)
    f = SimilarityFilter(0.99, max_skips=20)
    assert [f.skip(frame) for frame in [*ramp, contrast]] == [False] + [True] * 12
    assert not f.skip(b)
    import cv2

    def grey(rgb):  # the filter's 32x32 grey copy, its mean kept
        small = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        return small.astype(np.float32).ravel()

    assert SimilarityFilter.similarity(grey(ramp[0]), grey(ramp[-1])) < 0.95  # without the mean removed
