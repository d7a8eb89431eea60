"""torch interop: torch CPU tensors in, torch tensors out; inputs read in place and never modified;
any strides; requires_grad; batches; device errors; and the detectron2 drop-in against the dense
PyTorch implementation of the published algorithm."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import pdl_post
from conftest import assert_results_equal
from devices import HostCudaArray, to_device
from pdl_post import _cuda, detectron2, synthetic, viz
from pdl_post._inputs import as_numpy

torch = pytest.importorskip("torch")
dense_torch = pytest.importorskip("pdl_post.baselines.dense_torch")

CITY = {"thing_ids": synthetic.CITYSCAPES_THING_IDS, "stuff_area": 64, "nms_kernel": 7}


def scene(h=48, w=64, n=6, seed=0, **kw):
    return synthetic.make_scene(h, w, n, seed=seed, **kw)


def tensors(s):
    return torch.from_numpy(s.sem), torch.from_numpy(s.ctr), torch.from_numpy(s.off)


# ---------------------------------------------------------------------------------------------
# torch in -> torch out
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_torch_in_torch_out(backend):
    s = scene()
    sem, ctr, off = tensors(s)
    out = pdl_post.merge(sem, ctr, off, backend=backend, **CITY)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.int32 and out.device.type == "cpu" and tuple(out.shape) == (48, 64)
    want = pdl_post.merge(s.sem, s.ctr, s.off, backend=backend, **CITY)
    assert isinstance(want, np.ndarray)
    np.testing.assert_array_equal(out.numpy(), want)
    # ids beyond int32 -> int64, as numpy would
    out64 = pdl_post.merge(sem, ctr, off, backend=backend, label_divisor=2**30, **CITY)
    assert out64.dtype == torch.int64
    np.testing.assert_array_equal(
        out64.numpy(),
        pdl_post.merge(s.sem, s.ctr, s.off, backend=backend, label_divisor=2**30, **CITY),
    )


def test_postprocess_torch():
    s = scene(logits=True)
    lg, ctr, off = torch.from_numpy(s.logits), torch.from_numpy(s.ctr), torch.from_numpy(s.off)
    r = pdl_post.postprocess(lg, ctr, off, **CITY)
    assert isinstance(r.panoptic, torch.Tensor) and r.panoptic.dtype == torch.int32
    assert isinstance(r.centers, np.ndarray) and r.centers.dtype == np.int64
    want = pdl_post.postprocess(s.logits, s.ctr, s.off, **CITY)
    assert_results_equal(r, want)
    ref = pdl_post.postprocess(lg, ctr, off, backend="reference", **CITY)
    assert isinstance(ref.panoptic, torch.Tensor)
    assert_results_equal(r, ref)


class _TaggedTensor(torch.Tensor):
    """A tensor subclass defined outside torch, as torchvision's tv_tensors are."""


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_tensor_subclasses_are_tensors(where):
    # A subclass's type lives outside the torch package and inherits the class-level
    # __cuda_array_interface__ property: it must still be read as a tensor on its own device.
    if where == "cuda" and not (torch.cuda.is_available() and pdl_post.cuda_available()):
        pytest.skip("no GPU")
    s = scene(logits=True)
    lg, ctr, off = (
        torch.from_numpy(a).to(where).as_subclass(_TaggedTensor) for a in (s.logits, s.ctr, s.off)
    )
    mask = torch.from_numpy(s.sem > 0).to(where).as_subclass(_TaggedTensor)
    r = pdl_post.postprocess(lg, ctr, off, foreground_mask=mask, **CITY)
    assert isinstance(r.panoptic, torch.Tensor) and r.panoptic.device.type == where
    want = pdl_post.postprocess(s.logits, s.ctr, s.off, foreground_mask=s.sem > 0, **CITY)
    assert_results_equal(r, want)
    np.testing.assert_array_equal(
        viz.colorize(r.panoptic.as_subclass(_TaggedTensor)),
        viz.colorize(want.panoptic),
    )
    mixed = [torch.from_numpy(s.sem).to(where), ctr, off]  # a plain tensor beside subclasses
    np.testing.assert_array_equal(
        pdl_post.merge(*mixed, **CITY).cpu().numpy(), pdl_post.merge(s.sem, s.ctr, s.off, **CITY)
    )


MASK_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
    torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
]  # fmt: skip


@pytest.mark.parametrize("dtype", MASK_DTYPES, ids=str)
def test_foreground_masks_of_every_torch_dtype(dtype):
    # A non-bool mask means mask > 0; the CUDA path computes it with torch on the device, where
    # uint16/32/64 have no '>' (it uses != 0 for unsigned dtypes).
    s = scene()
    signed = dtype.is_signed or dtype.is_floating_point
    values = (s.sem.astype(np.int64) * 7) % 5 - (2 if signed else 0)
    mask = torch.from_numpy(values).to(dtype)
    if dtype.is_floating_point:
        mask[::5, ::3] = float("nan")  # NaN > 0 is False
    want = mask.double().numpy() > 0
    assert want.any() and not want.all()
    np.testing.assert_array_equal(_cuda.positive(mask, unsigned=not signed).numpy(), want)
    expected = pdl_post.merge(s.sem, s.ctr, s.off, foreground_mask=want, **CITY)
    np.testing.assert_array_equal(
        pdl_post.merge(*tensors(s), foreground_mask=mask, **CITY).numpy(), expected
    )
    if torch.cuda.is_available() and pdl_post.cuda_available():
        out = pdl_post.merge(*(t.cuda() for t in tensors(s)), foreground_mask=mask.cuda(), **CITY)
        np.testing.assert_array_equal(out.cpu().numpy(), expected)


def test_device_array_refuses_sparse_tensors_by_name():
    # A sparse CUDA tensor has no data pointer to read (torch raises a bare RuntimeError); the
    # CUDA dispatch's DeviceArray refuses the layout first (checked here on a CPU tensor).
    sparse = torch.from_numpy(scene().ctr).to_sparse()
    with pytest.raises(TypeError, match=r"ctr: unsupported torch layout torch.sparse_coo"):
        _cuda.DeviceArray(sparse, "ctr")


def test_mixed_numpy_and_torch():
    s = scene()
    out = pdl_post.merge(s.sem, torch.from_numpy(s.ctr), s.off, **CITY)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), pdl_post.merge(s.sem, s.ctr, s.off, **CITY))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("fdtype", [torch.float32, torch.float64])
def test_torch_dtypes(dtype, fdtype):
    s = scene(seed=3)
    want = pdl_post.merge(s.sem, s.ctr.astype(np.float64), s.off.astype(np.float64), **CITY)
    out = pdl_post.merge(
        torch.from_numpy(s.sem).to(dtype),
        torch.from_numpy(s.ctr).to(fdtype),
        torch.from_numpy(s.off).to(fdtype),
        **CITY,
    )
    # float32 -> float64 is exact, so the answer does not depend on fdtype.
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_tensors_are_widened(half):
    # Networks run in half precision hand out float16 / bfloat16: widened to float32 (exact),
    # so the answer is the float32 copy's, scores included.
    s = synthetic.make_scene(48, 64, 6, seed=4, logits=True)
    logits, ctr, off = (torch.from_numpy(a).to(half) for a in (s.logits, s.ctr, s.off))
    want = pdl_post.postprocess(logits.float(), ctr.float(), off.float(), stuff_area=16)
    got = pdl_post.postprocess(logits, ctr, off, stuff_area=16)
    assert_results_equal(got, want, score_rtol=0)
    assert isinstance(got.panoptic, torch.Tensor)
    assert torch.equal(pdl_post.merge(logits, ctr, off, stuff_area=16), want.panoptic)


def test_unsupported_torch_dtypes():
    s = scene()
    sem, ctr, off = tensors(s)
    with pytest.raises(TypeError, match=r"ctr: unsupported torch dtype torch.float8_e4m3fn"):
        pdl_post.merge(sem, ctr.to(torch.float8_e4m3fn), off)
    with pytest.raises(TypeError, match=r"sem: expected integer labels .* got dtype bool"):
        pdl_post.merge(sem > 0, ctr, off)
    with pytest.raises(TypeError, match=r"off: .*complex"):
        pdl_post.merge(sem, ctr, off.to(torch.complex64))


def _exotic(kind, t):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beta / prototype / deprecation notices of torch
        if kind == "sparse":
            return t.to_sparse()
        if kind == "quantized":
            return torch.quantize_per_tensor(t.float(), 0.1, 0, torch.quint8)
        if kind == "float8":
            return t.to(torch.float8_e4m3fn)
        if kind == "conj":
            return t.to(torch.complex64).conj()
        if kind == "nested":
            return torch.nested.nested_tensor([t[0].float(), t[0].float()])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["sparse", "quantized", "float8", "conj", "nested"])
@pytest.mark.parametrize("which", ["sem", "ctr", "off"])
def test_exotic_tensors_raise_type_or_value_error(kind, which):
    """Tensors numpy cannot view are refused with a TypeError/ValueError naming the argument."""
    s = scene()
    args = dict(zip(("sem", "ctr", "off"), tensors(s)))
    args[which] = _exotic(kind, args[which])
    with pytest.raises((TypeError, ValueError), match=rf"^{which}: "):
        pdl_post.merge(args["sem"], args["ctr"], args["off"], **CITY)


def test_lazily_negated_tensors_are_their_values():
    # torch's negative-bit views (what some ops return instead of a negated copy) are real data.
    s = scene()
    sem, ctr, off = tensors(s)
    negated = (-off).clone()._neg_view()
    assert negated.is_neg()
    np.testing.assert_array_equal(
        pdl_post.merge(sem, ctr, negated, **CITY), pdl_post.merge(sem, ctr, off, **CITY)
    )


# ---------------------------------------------------------------------------------------------
# no copies, any strides, inputs untouched
# ---------------------------------------------------------------------------------------------


def test_as_numpy_is_a_view():
    base = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8)
    for t in (
        base,
        base[:, ::2, 1::3],
        base.permute(0, 2, 1),
        base[:1].expand(5, 6, 8),
        base[1, 2:, 3:],
    ):
        a = as_numpy(t, "x")
        assert a.shape == tuple(t.shape)
        assert a.ctypes.data == t.data_ptr()
        assert np.shares_memory(a, base.numpy())
        np.testing.assert_array_equal(a, t.contiguous().numpy())
    # requires_grad: read through .detach(), no copy
    g = torch.zeros(3, 4, requires_grad=True)
    a = as_numpy(g, "x")
    assert a.ctypes.data == g.data_ptr()


def _strided(t, kind):
    """The same values as t in another layout (torch has no negative strides)."""
    if kind == "step":
        big = torch.zeros(*[2 * s for s in t.shape], dtype=t.dtype)
        view = big[tuple(slice(None, None, 2) for _ in t.shape)]
        view.copy_(t)
        return view
    if kind == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "offset":
        big = torch.zeros(t.numel() + 7, dtype=t.dtype)
        view = big[7:].view(t.shape)
        view.copy_(t)
        return view
    return t


def _numpy_peak_bytes(fn):
    """Peak bytes numpy allocates while fn runs (numpy reports its buffers to tracemalloc; torch's
    allocator and the C++ core's scratch memory are not counted)."""
    fn()  # warm-up: lazy imports, caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "step"])
def test_merge_reads_tensors_in_place(layout):
    """No copy of any input where the layout allows (any strides do): numpy allocates nothing of
    image size for torch inputs (the output is a torch tensor)."""
    s = scene(256, 384, 20, seed=9, logits=True)
    sem, ctr, off = (_strided(t, layout) for t in tensors(s))
    lg = _strided(torch.from_numpy(s.logits), layout)
    small = 64 * 1024
    assert _numpy_peak_bytes(lambda: pdl_post.merge(sem, ctr, off, **CITY)) < small
    assert _numpy_peak_bytes(lambda: pdl_post.postprocess(sem, ctr, off, **CITY)) < small
    # logits: the int32 argmax labels are the one image-sized intermediate
    labels_bytes = 256 * 384 * 4
    assert _numpy_peak_bytes(lambda: pdl_post.merge(lg, ctr, off, **CITY)) < labels_bytes + small
    # numpy in: only the output
    out_bytes = 256 * 384 * 4
    peak = _numpy_peak_bytes(lambda: pdl_post.merge(s.sem, s.ctr, s.off, **CITY))
    assert peak < out_bytes + small


@pytest.mark.parametrize("kind", ["step", "transposed", "offset", "channels_last"])
def test_non_contiguous_tensors(kind):
    b = synthetic.make_batch(2, 40, 56, 5, seed=1)
    sem, ctr, off = torch.from_numpy(b.sem), torch.from_numpy(b.ctr), torch.from_numpy(b.off)
    want = pdl_post.postprocess(b.sem, b.ctr, b.off, **CITY)
    s2, c2, o2 = _strided(sem, kind), _strided(ctr, kind), _strided(off, kind)
    for t, ref in ((s2, sem), (c2, ctr), (o2, off)):
        assert torch.equal(t, ref)
    got = pdl_post.postprocess(s2, c2, o2, **CITY)
    assert_results_equal(got, want)
    got_ref = pdl_post.postprocess(s2, c2, o2, backend="reference", **CITY)
    assert_results_equal(got_ref, want)


def test_zero_stride_tensors():
    s = scene(seed=5)
    sem, ctr, off = tensors(s)
    row = sem[20:21].expand(48, 64)
    want = pdl_post.merge(np.ascontiguousarray(row.numpy()), s.ctr, s.off, **CITY)
    np.testing.assert_array_equal(pdl_post.merge(row, ctr, off, **CITY).numpy(), want)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_inputs_not_modified(backend):
    s = scene(seed=2, logits=True)
    ins = [torch.from_numpy(s.logits), torch.from_numpy(s.ctr), torch.from_numpy(s.off)]
    mask = torch.from_numpy(s.sem >= 11)
    before = [t.clone() for t in [*ins, mask]]
    pdl_post.postprocess(*ins, foreground_mask=mask, backend=backend, **CITY)
    pdl_post.merge(torch.from_numpy(s.sem), ins[1], ins[2], backend=backend, **CITY)
    centers, _ = pdl_post.find_centers(ins[1], backend=backend)
    inst = pdl_post.group_pixels(torch.from_numpy(s.sem), centers, ins[2], backend=backend)
    pdl_post.fuse(ins[0], inst, backend=backend)
    for t, b in zip([*ins, mask], before):
        assert torch.equal(t, b)


def test_requires_grad():
    s = scene(seed=4, logits=True)
    lg = torch.from_numpy(s.logits).requires_grad_(True)
    ctr = torch.from_numpy(s.ctr).requires_grad_(True)
    off = torch.from_numpy(s.off).requires_grad_(True)
    r = pdl_post.postprocess(lg, ctr, off, **CITY)
    assert not r.panoptic.requires_grad
    assert_results_equal(r, pdl_post.postprocess(s.logits, s.ctr, s.off, **CITY))
    # a non-leaf tensor in an autograd graph
    out = pdl_post.merge(lg * 1.0, ctr + 0.0, off * 1.0, **CITY)
    np.testing.assert_array_equal(out.numpy(), r.panoptic.numpy())
    assert lg.grad is None


def test_batched_tensors():
    b = synthetic.make_batch(3, 32, 40, 4, seed=7, logits=True)
    sem, ctr, off = torch.from_numpy(b.sem), torch.from_numpy(b.ctr), torch.from_numpy(b.off)
    out = pdl_post.merge(sem, ctr, off, **CITY)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 32, 40)
    for i in range(3):
        np.testing.assert_array_equal(
            out[i].numpy(), pdl_post.merge(b.sem[i], b.ctr[i], b.off[i], **CITY)
        )
    rs = pdl_post.postprocess(torch.from_numpy(b.logits), ctr, off, **CITY)
    assert isinstance(rs, list) and len(rs) == 3
    assert all(isinstance(r.panoptic, torch.Tensor) for r in rs)
    assert_results_equal(rs, pdl_post.postprocess(b.logits, b.ctr, b.off, **CITY))
    # the stages, batched
    pairs = pdl_post.find_centers(ctr)
    inst = pdl_post.group_pixels(sem, [c for c, _ in pairs], off, thing_ids=CITY["thing_ids"])
    assert isinstance(inst, torch.Tensor) and inst.dtype == torch.int32
    pan = pdl_post.fuse(sem, inst, thing_ids=CITY["thing_ids"], stuff_area=64)
    assert isinstance(pan, torch.Tensor)
    np.testing.assert_array_equal(pan.numpy(), out.numpy())


def test_stage_outputs_are_tensors():
    s = scene(seed=8)
    sem, ctr, off = tensors(s)
    centers, _ = pdl_post.find_centers(ctr)
    assert isinstance(centers, np.ndarray)
    inst = pdl_post.group_pixels(sem, torch.from_numpy(centers), off, thing_ids=CITY["thing_ids"])
    assert isinstance(inst, torch.Tensor) and inst.dtype == torch.int32
    pan = pdl_post.fuse(s.sem, inst, thing_ids=CITY["thing_ids"], stuff_area=64)
    assert isinstance(pan, torch.Tensor) and pan.dtype == torch.int32
    np.testing.assert_array_equal(pan.numpy(), pdl_post.merge(s.sem, s.ctr, s.off, **CITY))


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sem", "ctr", "off", "foreground_mask"])
def test_meta_tensor_is_a_clear_value_error(which):
    """A tensor that is not on the CPU (simulated with the 'meta' device) is refused by name."""
    s = scene()
    args = dict(zip(("sem", "ctr", "off"), tensors(s)))
    args["foreground_mask"] = torch.from_numpy(s.sem > 10)
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=rf"{which}: got a tensor on device 'meta'.*\.cpu\(\)"):
        pdl_post.merge(
            args["sem"], args["ctr"], args["off"], foreground_mask=args["foreground_mask"], **CITY
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensor():
    s = scene()
    sem, ctr, off = (t.cuda() for t in tensors(s))
    if "cuda" in pdl_post.available_backends():
        out = pdl_post.merge(sem, ctr, off, **CITY)
        assert out.device.type == "cuda"
        np.testing.assert_array_equal(
            out.cpu().numpy(), pdl_post.merge(s.sem, s.ctr, s.off, **CITY)
        )
    else:
        with pytest.raises(ValueError, match=r"sem: got a tensor on device 'cuda"):
            pdl_post.merge(sem, ctr, off, **CITY)


# ---------------------------------------------------------------------------------------------
# detectron2 drop-in == the dense PyTorch implementation
# ---------------------------------------------------------------------------------------------

D2_SCENES = [
    # (h, w, centres, seed, kwargs of make_scene)
    (32, 48, 0, 0, {}),
    (48, 64, 1, 1, {}),
    (64, 96, 8, 2, {}),
    (64, 128, 30, 3, {"integer_offsets": True}),
    (80, 80, 60, 4, {"offset_noise": 3.0, "semantic_noise": 0.05}),
    (40, 72, 12, 5, {"ctr_dtype": np.float64, "off_dtype": np.float64, "sem_dtype": np.uint8}),
]


def _quantised(ctr):
    """A heatmap with plateaus and tied peaks (a few levels)."""
    return (np.round(ctr * 4) / 4).astype(ctr.dtype)


D2_OPTIONS = [
    {
        "thing_ids": set(range(11, 19)),
        "label_divisor": 1000,
        "stuff_area": 64,
        "void_label": 0,
        "threshold": 0.1,
        "nms_kernel": 7,
        "top_k": 200,
    },
    {
        "thing_ids": [11, 13, 14],
        "label_divisor": 256,
        "stuff_area": 0,
        "void_label": -1,
        "threshold": 0.3,
        "nms_kernel": 3,
        "top_k": 4,
    },
    {
        "thing_ids": (12, 15, 17, 18),
        "label_divisor": 10000,
        "stuff_area": 300,
        "void_label": 255,
        "threshold": 0.05,
        "nms_kernel": 11,
        "top_k": None,
    },
]
D2_OPTION_IDS = ["cityscapes", "small-topk", "no-topk"]


@pytest.mark.parametrize(("h", "w", "n", "seed", "make_kw"), D2_SCENES)
@pytest.mark.parametrize("opts", D2_OPTIONS, ids=D2_OPTION_IDS)
@pytest.mark.parametrize("quantise", [False, True])
def test_detectron2_dropin_equals_dense_torch(h, w, n, seed, make_kw, opts, quantise):
    s = synthetic.make_scene(h, w, n, seed=seed, **make_kw)
    ctr = _quantised(s.ctr) if quantise else s.ctr
    sem_t = torch.from_numpy(s.sem)[None]  # [1, H, W]
    ctr_t = torch.from_numpy(ctr)  # [1, H, W]
    off_t = torch.from_numpy(s.off)  # [2, H, W]
    pan, centers = detectron2.get_panoptic_segmentation(
        sem_t,
        ctr_t,
        off_t,
        opts["thing_ids"],
        opts["label_divisor"],
        opts["stuff_area"],
        opts["void_label"],
        threshold=opts["threshold"],
        nms_kernel=opts["nms_kernel"],
        top_k=opts["top_k"],
    )
    want_pan, want_centers = dense_torch.panoptic_dense_torch(
        sem_t[0],
        ctr_t,
        off_t,
        thing_ids=opts["thing_ids"],
        label_divisor=opts["label_divisor"],
        stuff_area=opts["stuff_area"],
        void_label=opts["void_label"],
        threshold=opts["threshold"],
        nms_kernel=opts["nms_kernel"],
        top_k=opts["top_k"],
    )
    assert isinstance(pan, torch.Tensor) and isinstance(centers, torch.Tensor)
    assert tuple(pan.shape) == (1, h, w) and pan.dtype == torch.int64
    assert centers.dim() == 3 and centers.shape[0] == 1 and centers.shape[2] == 2
    assert centers.dtype == torch.int64
    assert torch.equal(centers[0], want_centers)
    assert torch.equal(pan[0], want_pan)
    if n and not quantise and opts["top_k"] is None:
        assert centers.shape[1] > 0


def test_detectron2_dropin_foreground_mask():
    s = synthetic.make_scene(48, 64, 10, seed=11)
    mask = torch.from_numpy((s.panoptic_gt % 1000) > 0)
    args = (torch.from_numpy(s.sem)[None], torch.from_numpy(s.ctr), torch.from_numpy(s.off))
    pan, centers = detectron2.get_panoptic_segmentation(
        *args, set(range(11, 19)), 1000, 64, 0, foreground_mask=mask[None]
    )
    want_pan, want_centers = dense_torch.panoptic_dense_torch(
        args[0][0],
        args[1],
        args[2],
        thing_ids=range(11, 19),
        label_divisor=1000,
        stuff_area=64,
        void_label=0,
        foreground_mask=mask,
    )
    assert torch.equal(centers[0], want_centers)
    assert torch.equal(pan[0], want_pan)


def test_detectron2_dropin_top_k_rule():
    """detectron2 keeps peaks strictly above the top_k-th value: at most top_k - 1, ties dropped."""
    h, w = 9, 9
    sem = torch.full((1, h, w), 11, dtype=torch.int64)
    ctr = torch.zeros(1, h, w)
    ctr[0, 1, 1], ctr[0, 1, 7], ctr[0, 7, 1], ctr[0, 7, 7] = 0.9, 0.8, 0.8, 0.7
    off = torch.zeros(2, h, w)
    _, centers = detectron2.get_panoptic_segmentation(
        sem, ctr, off, {11}, 1000, 0, 0, nms_kernel=3, top_k=3
    )
    assert centers[0].tolist() == [[1, 1]]  # 3rd value is 0.8: 0.8 ties are dropped
    _, centers = detectron2.get_panoptic_segmentation(
        sem, ctr, off, {11}, 1000, 0, 0, nms_kernel=3, top_k=4
    )
    assert centers[0].tolist() == [[1, 1], [1, 7], [7, 1]]
    _, centers = detectron2.get_panoptic_segmentation(
        sem, ctr, off, {11}, 1000, 0, 0, nms_kernel=3, top_k=5
    )
    assert centers[0].tolist() == [[1, 1], [1, 7], [7, 1], [7, 7]]
    _, centers = detectron2.get_panoptic_segmentation(
        sem, ctr, off, {11}, 1000, 0, 0, nms_kernel=3, top_k=0
    )
    assert tuple(centers.shape) == (1, 0, 2)


@pytest.mark.parametrize(("h", "w", "n", "seed", "make_kw"), [D2_SCENES[i] for i in (2, 3, 5)])
@pytest.mark.parametrize("opts", D2_OPTIONS, ids=D2_OPTION_IDS)
def test_detectron2_dropin_on_cuda_arrays(cuda_device, monkeypatch, h, w, n, seed, make_kw, opts):
    """detectron2 hands CUDA tensors over: they run on the CUDA path (no host copy: a CUDA array
    that reached the host path would be refused) and give the CPU tensors' answer, on their
    device; plateaus and tied peaks (quantised heatmap) and a foreground mask included."""
    if cuda_device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the GPU is CuPy's only: detectron2's results are torch CUDA tensors")
    s = synthetic.make_scene(h, w, n, seed=seed, **make_kw)
    mask = ((s.panoptic_gt % 1000) > 0)[None]
    if cuda_device == "emulated":
        # torch cannot wrap the emulator's host-backed "CUDA" arrays: the results are read on the
        # host instead (on a GPU, _int64_tensor converts the CUDA tensors on their device).
        monkeypatch.setattr(
            detectron2,
            "_int64_tensor",
            lambda a, device: torch.as_tensor(
                a.a if isinstance(a, HostCudaArray) else a, dtype=torch.int64
            ),
        )
    for ctr in (s.ctr, _quantised(s.ctr)):
        for m in (None, mask):
            host = [
                None if a is None else torch.from_numpy(a) for a in (s.sem[None], ctr, s.off, m)
            ]
            cuda = [to_device(a, cuda_device) for a in (s.sem[None], ctr, s.off, m)]
            want_pan, want_centers = detectron2.get_panoptic_segmentation(
                *host[:3], **opts, foreground_mask=host[3]
            )
            pan, centers = detectron2.get_panoptic_segmentation(
                *cuda[:3], **opts, foreground_mask=cuda[3]
            )
            if cuda_device == "cuda" and isinstance(cuda[0], torch.Tensor):
                assert pan.device == cuda[0].device and centers.device == cuda[0].device
            assert pan.dtype == centers.dtype == torch.int64
            assert torch.equal(pan.cpu(), want_pan)
            assert torch.equal(centers.cpu(), want_centers)


@pytest.mark.parametrize(("h", "w", "n", "seed", "make_kw"), D2_SCENES)
@pytest.mark.parametrize("quantise", [False, True])
def test_detectron2_find_instance_center_equals_dense_torch(h, w, n, seed, make_kw, quantise):
    s = synthetic.make_scene(h, w, n, seed=seed, **make_kw)
    ctr = torch.from_numpy(_quantised(s.ctr) if quantise else s.ctr)  # [1, H, W]
    for kw in ({}, dict(nms_kernel=7, top_k=200), dict(threshold=0.05, nms_kernel=11, top_k=5)):
        centers = detectron2.find_instance_center(ctr, **kw)
        want = dense_torch._find_centers(
            ctr, kw.get("threshold", 0.1), kw.get("nms_kernel", 3), kw.get("top_k")
        )
        assert isinstance(centers, torch.Tensor) and centers.dtype == torch.int64
        assert centers.dim() == 2 and centers.shape[1] == 2
        assert torch.equal(centers, want), kw
        if n and not quantise and "top_k" not in kw:
            assert centers.shape[0] > 0


def test_detectron2_find_instance_center_top_k_rule_and_errors():
    ctr = torch.zeros(1, 9, 9)
    ctr[0, 1, 1], ctr[0, 1, 7], ctr[0, 7, 1], ctr[0, 7, 7] = 0.9, 0.8, 0.8, 0.7
    assert detectron2.find_instance_center(ctr, top_k=3).tolist() == [[1, 1]]  # 0.8 ties dropped
    assert detectron2.find_instance_center(ctr, top_k=4).tolist() == [[1, 1], [1, 7], [7, 1]]
    assert len(detectron2.find_instance_center(ctr)) == 4
    assert tuple(detectron2.find_instance_center(ctr, top_k=0).shape) == (0, 2)
    assert detectron2.find_instance_center(ctr.numpy(), top_k=2).tolist() == [[1, 1]]  # array-like
    with pytest.raises(ValueError, match=r"center_heatmap: expected shape \[1,H,W\], got \[9, 9\]"):
        detectron2.find_instance_center(ctr[0])
    with pytest.raises(TypeError, match=r"^center_heatmap: expected a float"):
        detectron2.find_instance_center(ctr.long())
    with pytest.raises(ValueError, match=r"^nms_kernel: "):
        detectron2.find_instance_center(ctr, nms_kernel=4)


def test_detectron2_find_instance_center_on_cuda_arrays(cuda_device, monkeypatch):
    """A CUDA heatmap runs find_centers on the device: the CPU tensor's centres, on its device."""
    if cuda_device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the GPU is CuPy's only: detectron2's results are torch CUDA tensors")
    if cuda_device == "emulated":  # as in test_detectron2_dropin_on_cuda_arrays
        monkeypatch.setattr(
            detectron2,
            "_int64_tensor",
            lambda a, device: torch.as_tensor(
                a.a if isinstance(a, HostCudaArray) else a, dtype=torch.int64
            ),
        )
    s = synthetic.make_scene(64, 96, 12, seed=3)
    for ctr in (s.ctr, _quantised(s.ctr)):
        for kw in ({}, dict(nms_kernel=7, top_k=4), dict(top_k=0)):
            want = detectron2.find_instance_center(torch.from_numpy(ctr), **kw)
            centers = detectron2.find_instance_center(to_device(ctr, cuda_device), **kw)
            if cuda_device == "cuda":
                assert centers.is_cuda
            assert centers.dtype == torch.int64
            assert torch.equal(centers.cpu(), want), kw


def test_find_centers_results_as_torch_views_of_one_upload(emulated_cuda, monkeypatch):
    """On a GPU with torch, find_centers' results are views of one int64 tensor uploaded for the
    whole batch (centres, then the scores' bits): the views, made here from a CPU tensor, hold the
    CPU's values with torch's dtypes."""
    uploads = []

    def upload(library, host, device):
        assert library == "torch"
        uploads.append(torch.from_numpy(host))
        return uploads[-1]

    monkeypatch.setattr(_cuda, "_output_library", lambda arrays: "torch")
    monkeypatch.setattr(_cuda, "_to_device", upload)
    b = synthetic.make_batch(3, 40, 56, 6, seed=5)
    for kw in (dict(top_k=None), dict(top_k=2), dict(top_k=0)):
        got = pdl_post.find_centers(HostCudaArray(b.ctr), **kw)
        want = pdl_post.find_centers(b.ctr, **kw)
        assert len(uploads) == 1
        for (centers, scores), (want_centers, want_scores) in zip(got, want):
            assert centers.dtype == torch.int64 and scores.dtype == torch.float64
            assert centers.untyped_storage().data_ptr() == uploads[0].untyped_storage().data_ptr()
            np.testing.assert_array_equal(centers.numpy(), want_centers)
            np.testing.assert_array_equal(scores.numpy(), want_scores)
        uploads.clear()
    centers, scores = pdl_post.find_centers(HostCudaArray(b.ctr[0]))  # one image
    np.testing.assert_array_equal(centers.numpy(), pdl_post.find_centers(b.ctr[0])[0])


def test_fuse_renumbers_sparse_ids_with_torch_as_the_cpu_does():
    """On a GPU with torch, fuse renumbers ids beyond H * W with torch.unique (here on CPU
    tensors): 1..n in increasing order over the batch, 0 kept where present, as the CPU's
    np.unique; and each image's largest new id."""
    rng = np.random.default_rng(2)
    for with_zero in (True, False):
        ids = rng.choice([3, 2**40, 7_000_000, 2**33 + 1], size=(3, 5, 6)).astype(np.int64)
        if with_zero:
            ids[1, :2] = 0
        compact, counts = _cuda._renumbered(torch.from_numpy(ids), 3)
        present, inverse = np.unique(ids, return_inverse=True)
        want = inverse.reshape(3, -1) + (1 if present[0] > 0 else 0)
        assert compact.dtype == torch.int32 and compact.is_contiguous()
        np.testing.assert_array_equal(compact.numpy(), want)
        assert counts == want.max(axis=1).tolist()


def test_detectron2_dropin_mixed_devices(emulated_cuda):
    """A CPU tensor beside CUDA arrays is refused, named as detectron2 names the arguments."""
    s = synthetic.make_scene(32, 48, 3, seed=0)
    sem, off = torch.from_numpy(s.sem)[None], torch.from_numpy(s.off)
    kw = {"thing_ids": {11}, "label_divisor": 1000, "stuff_area": 0, "void_label": 0}
    with pytest.raises(
        ValueError,
        match=r"^sem_seg: expected a CUDA array like center_heatmap, got a tensor on device 'cpu';",
    ):
        detectron2.get_panoptic_segmentation(sem, HostCudaArray(s.ctr), off, **kw)
    with pytest.raises(
        ValueError,
        match=r"^offsets: expected a CUDA array like sem_seg, got a tensor on device 'cpu';",
    ):
        detectron2.get_panoptic_segmentation(
            HostCudaArray(s.sem[None]), HostCudaArray(s.ctr), off, **kw
        )
    with pytest.raises(
        ValueError, match=r"^foreground_mask: expected a CUDA array like sem_seg, got a tensor on"
    ):
        detectron2.get_panoptic_segmentation(
            *(HostCudaArray(a) for a in (s.sem[None], s.ctr, s.off)),
            **kw,
            foreground_mask=torch.ones(1, 32, 48, dtype=torch.bool),
        )
