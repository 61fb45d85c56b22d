"""The fast CPU path computes what the plain model computes; the chunked ops equal one chunk."""
import copy
import ctypes
import dataclasses

import pytest
import torch

import remn
from remn import reference
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference import fast_path, winograd
from remn.inference.fast_path import (
    FastPathSettings, FastREMN, FusedConv, cpu_has_native_bf16, fold_batchnorm, inference_model, prepare_fast_model,
)
from remn.inference.winograd import WinogradConv2d

HEIGHT, WIDTH = 56, 72  # a padded band on both axes (not multiples of 16)
ALL_OFF = FastPathSettings(fold_batchnorm=False, share_inputs=False, channels_last=False, fuse_pointwise=False,
                           bf16="none")
ROUTES = {
    "fold": dataclasses.replace(ALL_OFF, fold_batchnorm=True),
    "fold+fuse": dataclasses.replace(ALL_OFF, fold_batchnorm=True, fuse_pointwise=True),
    "fuse": dataclasses.replace(ALL_OFF, fuse_pointwise=True),  # the residual blocks only: no BatchNorm folded
    "share": dataclasses.replace(ALL_OFF, share_inputs=True),
    "channels_last": dataclasses.replace(ALL_OFF, channels_last=True),
    "fp32 default": FastPathSettings(bf16="none"),
}
MODELS = {
    "tiny": {},
    "tiny-rde": {"memory": "rde", "gate": False, "local_attention": False},
}


def random_statistics(model):
    """BatchNorm statistics and affine weights away from their identity start, so folding them matters."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: random_statistics(remn.build_model(config="tiny", device="cpu", **overrides))
            for name, overrides in MODELS.items()}


def one_step(model, num_objects, autocast=False):
    """encode_key, encode_value and a segment with T = 2 memory frames and the previous frame:
    → (key [1, Ck, h, w], values [1, O, Cv, h, w], logits [1, O+1, Hp, Wp])."""
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=generator)
    probs = torch.rand(1, num_objects, HEIGHT, WIDTH, generator=generator)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), context:
        features = model.encode_key(image)
        values = model.encode_value(features, probs)
        memory_key = torch.stack([features.key, features.key.flip(-1)], dim=2)  # [1, Ck, 2, h, w]
        memory_value = torch.stack([values, values.flip(-1)], dim=3)  # [1, O, Cv, 2, h, w]
        output = model.segment(features, memory_key, memory_value, previous=(features, probs), top_k=8)
    return features.key.float(), values.float(), output.padded_logits.float()


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("num_objects", [1, 3])
def test_each_fp32_route_computes_the_plain_model(models, route, model_name, num_objects):
    model = models[model_name]
    fast = prepare_fast_model(model, ROUTES[route])
    for got, want in zip(one_step(fast, num_objects), one_step(model, num_objects)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("parts", ["key", "encoders", "all", "by_objects"])
def test_bf16_route_errs_no_more_than_torch_autocast(models, parts):
    """bf16 encoders (and decoder): their error against fp32 stays within 2× that of the
    plain model under torch's own bf16 autocast (plus a rounding floor)."""
    model = models["tiny"]
    fp32 = one_step(model, 2)
    autocast = one_step(model, 2, autocast=True)
    fast = one_step(prepare_fast_model(model, FastPathSettings(bf16=parts)), 2)
    for got, torch_bf16, want in zip(fast, autocast, fp32):
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 2 * (torch_bf16 - want).abs().max().item() + 1e-2 * scale


@pytest.mark.parametrize("settings", [FastPathSettings(bf16="all"), FastPathSettings(bf16="key"),
                                      FastPathSettings(fold_batchnorm=False, share_inputs=False, bf16="encoders"),
                                      FastPathSettings(bf16="by_objects")])
def test_bf16_weights_stored_once_compute_what_autocasts_casts_compute(models, monkeypatch, settings):
    """store_bf16_weights holds the bf16 trunks' conv and linear weights in bf16 (no cast per
    call) and leaves every other parameter fp32; the outputs are those of autocast casting
    fp32 weights on each call, to the bit."""
    model = models["tiny"]
    stored = prepare_fast_model(model, settings)
    monkeypatch.setattr(FastREMN, "store_bf16_weights", lambda self: None)
    cast_per_call = prepare_fast_model(model, settings)
    parts = {"key": ("key_encoder", "key_proj", "key_comp"),
             "encoders": ("key_encoder", "key_proj", "key_comp", "value_encoder"),
             "all": ("key_encoder", "key_proj", "key_comp", "value_encoder", "decoder"),
             "by_objects": ("key_encoder", "key_proj", "key_comp", "value_encoder")}[settings.bf16]
    for name, parameter in stored.named_parameters():
        module = stored.get_submodule(name.rpartition(".")[0])
        in_bf16 = name.split(".")[0] in parts and isinstance(module, (torch.nn.Conv2d, FusedConv, torch.nn.Linear))
        assert parameter.dtype == (torch.bfloat16 if in_bf16 else torch.float32), name
    assert any(p.dtype == torch.float32 for n, p in stored.named_parameters() if n.startswith("local_branch"))
    for got, want in zip(one_step(stored, 2), one_step(cast_per_call, 2)):
        assert torch.equal(got, want)


def test_bf16_encoders_leave_the_decoder_in_fp32(models):
    """bf16="encoders" rounds the encoders' outputs but decodes in fp32: on the same fp32
    features and readout its decode is the plain model's, while bf16="all" changes it."""
    model = models["tiny"]
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    encoders, every_part = (prepare_fast_model(model, FastPathSettings(bf16=parts)) for parts in ("encoders", "all"))
    with torch.inference_mode():
        features = model.encode_key(image)
        plain_key = features.key
        readout = torch.randn(1, 2, model.config.value_dim, *features.key.shape[-2:],
                              generator=torch.Generator().manual_seed(3))  # [1, O, Cv, h, w]
        want = model.decode(features, readout)
        bf16_key = encoders.encode_key(image).key
        assert bf16_key.dtype == torch.float32 and (bf16_key - plain_key).abs().max() > 1e-4 * plain_key.abs().max()
        torch.testing.assert_close(encoders.decode(features, readout), want, rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())
        assert (every_part.decode(features, readout) - want).abs().max() > 1e-3 * want.abs().max()


def test_bf16_key_encoder_leaves_the_value_encoder_in_fp32(models):
    """bf16="key" rounds the key encoder's outputs but encodes values in fp32: on the same
    fp32 key features its values are the plain model's, while bf16="encoders" changes them."""
    model = models["tiny"]
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=generator)
    masks = (torch.rand(1, 2, HEIGHT, WIDTH, generator=generator) > 0.5).float()  # [1, O, H, W]
    key_only, encoders = (prepare_fast_model(model, FastPathSettings(bf16=parts)) for parts in ("key", "encoders"))
    with torch.inference_mode():
        features = model.encode_key(image)
        want = model.encode_value(features, masks)
        bf16_key = key_only.encode_key(image).key
        assert (bf16_key - features.key).abs().max() > 1e-4 * features.key.abs().max()
        torch.testing.assert_close(key_only.encode_value(features, masks), want, rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())
        assert (encoders.encode_value(features, masks) - want).abs().max() > 1e-3 * want.abs().max()


@pytest.mark.parametrize("share_inputs", [True, False])
def test_bf16_by_objects_encodes_values_in_bf16_up_to_two_objects_and_in_fp32_beyond(models, share_inputs):
    """bf16="by_objects" steps as "encoders" with at most BF16_VALUES_MAX_OBJECTS objects and
    as "key" with more (its value encoder's fp32 copy), to the bit; the two differ. The copy
    is finished on the first step with more objects: until then the model holds only its
    fp32 weights, outside the model's parameters."""
    model = models["tiny"]
    by_objects, encoders, key_only = (prepare_fast_model(model, FastPathSettings(bf16=parts, share_inputs=share_inputs))
                                      for parts in ("by_objects", "encoders", "key"))
    assert by_objects.holds_fp32_values and not encoders.holds_fp32_values
    parameters = sum(p.numel() for p in by_objects.parameters())
    assert parameters == sum(p.numel() for p in encoders.parameters())
    for num_objects in range(1, fast_path.BF16_VALUES_MAX_OBJECTS + 3):
        same, other = (encoders, key_only) if num_objects <= fast_path.BF16_VALUES_MAX_OBJECTS else (key_only, encoders)
        got, want, not_want = (one_step(network, num_objects) for network in (by_objects, same, other))
        assert all(torch.equal(a, b) for a, b in zip(got, want)), num_objects
        assert not torch.equal(got[1], not_want[1]), num_objects  # the values tell the two apart
        finished = by_objects.fp32_value_encoder
        assert (finished is None) == (num_objects <= fast_path.BF16_VALUES_MAX_OBJECTS), num_objects
    assert finished is by_objects.fp32_value_encoder  # finished once
    assert sum(p.numel() for p in by_objects.parameters()) > parameters
    assert {type(m) for m in finished.modules()} == {type(m) for m in key_only.value_encoder.modules()}


def test_moving_the_model_moves_the_kept_fp32_value_copy(models):
    """`.to()` before the copy is finished reaches it, as it reaches the model's own modules."""
    by_objects = prepare_fast_model(models["tiny"], FastPathSettings(bf16="by_objects", fuse_pointwise=False))
    by_objects.to(torch.float64)
    by_objects.finish_fp32_values()
    assert {p.dtype for p in by_objects.fp32_value_encoder.parameters()} == {torch.float64}


def test_preparing_leaves_the_model_and_the_random_stream_alone(models):
    model = models["tiny"]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    state = torch.random.get_rng_state()
    fast = prepare_fast_model(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(fast, FastREMN) and fast is not model
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # all folded
    assert not any(p.requires_grad for p in fast.parameters())
    conv = fast.key_encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_bad_input_is_refused(models):
    model = models["tiny"]
    with pytest.raises(TypeError, match="needs a REMN"):
        prepare_fast_model(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="eval mode"):
        prepare_fast_model(model.train())
    model.eval()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1)).train())
    with pytest.raises(ValueError, match="channels_last must be a bool"):
        FastPathSettings(channels_last=1)
    for wrong in ("yes", True):
        with pytest.raises(ValueError, match="bf16 must be one of"):
            FastPathSettings(bf16=wrong)
    with pytest.raises(ValueError, match="fast_path must be"):
        inference_model(model, "on")
    with pytest.raises(ValueError, match="precision must be one of"):
        FastPathSettings().resolved_bf16("int8")
    with pytest.raises(ValueError, match='keep_fp32_values is for bf16 "by_objects"'):
        prepare_fast_model(model, FastPathSettings(bf16="encoders")).keep_fp32_values()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_follows_the_precision_unless_set(monkeypatch, native):
    monkeypatch.setattr(fast_path, "cpu_has_native_bf16", lambda: native)
    assert FastPathSettings().resolved_bf16("bf16") == "all"
    assert FastPathSettings().resolved_bf16("fp32") == "none"
    assert FastPathSettings().resolved_bf16("auto") == ("by_objects" if native else "none")
    assert FastPathSettings(bf16="all").resolved_bf16("fp32") == "all"
    assert FastPathSettings(bf16="none").resolved_bf16("auto") == "none"


def test_native_bf16_is_torchs_report():
    assert cpu_has_native_bf16() == (torch.backends.cpu.get_cpu_capability() == "AVX512" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))


def test_segmenter_runs_the_fast_path_on_cpu_by_default_with_the_same_labels(models):
    model = models["tiny"]
    frames, masks = make_clip(seed=4, num_frames=5, height=HEIGHT, width=WIDTH, num_objects=2)
    config = resolve_inference_config("tiny", size=None, precision="fp32")
    default, plain = Segmenter(model, config), Segmenter(model, config, fast_path=False)
    assert isinstance(default.model, FastREMN) and default.model.bf16 == "none"
    assert plain.model is model
    for precision, parts in (("bf16", "all"), ("auto", "by_objects" if cpu_has_native_bf16() else "none")):
        assert Segmenter(model, resolve_inference_config(config, precision=precision)).model.bf16 == parts
    for index, frame in enumerate(frames):
        mask = masks[0] if index == 0 else None
        fast_result, plain_result = default.step(frame, mask), plain.step(frame, mask)
        assert (fast_result.labels == plain_result.labels).double().mean() >= 0.999
        torch.testing.assert_close(fast_result.probs, plain_result.probs, rtol=0, atol=1e-4)
    assert default.report().memorised == plain.report().memorised


@pytest.mark.parametrize("top_k", [None, 3, 40])
def test_memory_read_in_many_chunks_equals_one_chunk(monkeypatch, top_k):
    """Chunks of a few queries (tails included) read what one chunk reads, ties and −inf keys too."""
    query_key = torch.randint(-2, 3, (2, 4, 37)).float()
    memory_key = torch.randint(-2, 3, (2, 4, 29)).float()  # integer keys: exact, tied logits
    memory_value = torch.randn(2, 3, 5, 29)
    key_bias = torch.zeros(2, 29)
    key_bias[1, ::3] = float("-inf")
    whole = reference.memory_read(query_key, memory_key, memory_value, key_bias, top_k=top_k)
    monkeypatch.setattr(reference, "MEMORY_READ_CHUNK_ELEMENTS", 2 * 29 * 7)  # 7 queries per chunk
    chunked = reference.memory_read(query_key, memory_key, memory_value, key_bias, top_k=top_k)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("radius", [1, 3])
def test_local_attention_in_row_tiles_equals_one_tile(monkeypatch, radius):
    query_key, key = torch.randn(2, 6, 11, 9), torch.randn(2, 6, 11, 9)
    value, key_bias = torch.randn(2, 3, 4, 11, 9), torch.randn(2, 3, 11, 9)
    whole = reference.local_attention(query_key, key, value, radius, key_bias)
    monkeypatch.setattr(reference, "LOCAL_ATTENTION_TILE_ELEMENTS", 1)  # one query row per tile
    tiled = reference.local_attention(query_key, key, value, radius, key_bias)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("bf16", ["none", "by_objects"])
def test_compiled_trunks_trace_as_whole_graphs_and_compute_the_same(models, monkeypatch, mode, bf16):
    """compile_mode: each trunk goes through torch.compile(fullgraph=True, dynamic=False), so a
    graph break fails here. The compiler backend is swapped for dynamo's eager one (Inductor
    takes minutes on this CPU; bench/bench_cuda_fast_path.py compiles for real): the traced
    graphs then run the same ops, one compile per trunk and shape (object count). With bf16
    "by_objects" the value encoder's fp32 copy is finished before the compile, so the value
    trunk at 3 objects (the copy's) traces whole too."""
    compiled = []
    real_compile = torch.compile

    def traced_only(fn, *, mode, fullgraph, dynamic):
        compiled.append((fn.__name__, mode, fullgraph, dynamic))
        return real_compile(fn, backend="eager", fullgraph=fullgraph, dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", traced_only)
    torch._dynamo.reset()
    model = models["tiny"]
    fast = prepare_fast_model(model, FastPathSettings(bf16=bf16, compile_mode=mode))
    plain = prepare_fast_model(model, FastPathSettings(bf16=bf16, fuse_pointwise=False))  # the ops compile traces
    assert fast.compile_mode == mode and plain.compile_mode is None
    assert (fast.fp32_value_encoder is not None) == (bf16 == "by_objects")
    assert compiled == [(name, mode, True, False) for name in ("_key_trunk", "_value_trunk", "_decode_trunk")]
    for num_objects in (1, 3):  # a second object count recompiles the value and decode trunks
        for got, want in zip(one_step(fast, num_objects), one_step(plain, num_objects)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    torch._dynamo.reset()


def test_cuda_graph_modes_hand_back_copies_a_replay_cannot_overwrite(monkeypatch):
    """A CUDA-graph replay writes its outputs into the same memory each time; the trunks'
    outputs outlive the call (a frame's features serve the next frame), so they are copied."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(True))
    static = torch.zeros(3), torch.zeros(2)

    def replay(x):  # what a captured graph does: the same output buffers every call
        static[0].copy_(x)
        static[1].fill_(x.sum())
        return static

    run = fast_path._graph_outputs_copied(replay)
    first = run(torch.ones(3))
    second = run(torch.full((3,), 2.0))
    assert len(marks) == 2
    assert torch.equal(first[0], torch.ones(3)) and torch.equal(first[1], torch.full((2,), 3.0))
    assert torch.equal(second[0], torch.full((3,), 2.0)) and second[0].data_ptr() != static[0].data_ptr()


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        FastPathSettings(compile_mode="fast")
    with pytest.raises(ValueError, match="compile mode must be one of"):
        prepare_fast_model(remn.build_model(config="tiny", device="cpu").eval()).compile_trunks("reduce_overhead")


@pytest.mark.parametrize("winograd_widths", [128, 1])  # 1: every 3×3 convolution of the tiny model by Winograd
def test_without_its_own_bf16_the_fast_path_keeps_an_outer_autocasts_dtypes(models, monkeypatch, winograd_widths):
    """bf16="none" (what the fast path takes off the CPU, where the Segmenter's own autocast
    applies the precision): features, values and logits keep the dtypes that autocast gives
    the plain model; no fp32 copies double what memory holds and reads."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", winograd_widths)
    model = models["tiny"]
    fast = prepare_fast_model(model, FastPathSettings(bf16="none"))
    assert any(isinstance(m, WinogradConv2d) for m in fast.modules()) == (winograd_widths == 1)
    image, probs = torch.rand(1, 3, HEIGHT, WIDTH), torch.rand(1, 2, HEIGHT, WIDTH)
    dtypes = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for network in (model, fast):
            features = network.encode_key(image)
            values = network.encode_value(features, probs)
            logits = network.decode(features, values)
            dtypes.append((features.key.dtype, features.f4.dtype, values.dtype, logits.dtype))
    assert dtypes[0] == dtypes[1] and dtypes[0][0] == torch.bfloat16, dtypes


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h): byte counts of the heap and of mmapped blocks."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def test_freed_memory_stays_in_the_heap_for_the_next_allocation():
    """keep_freed_memory: a 64 MiB tensor comes from the heap, not its own mmap, and its
    memory stays in the heap once freed (glibc would mmap it and give it back)."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc 2.33 or newer (mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    assert fast_path.keep_freed_memory()
    size = 64 << 20
    mmapped_before = libc.mallinfo2().hblkhd
    block = torch.ones(size, dtype=torch.uint8)
    assert libc.mallinfo2().hblkhd - mmapped_before < size
    del block
    assert libc.mallinfo2().fordblks >= size


@pytest.mark.parametrize("reuse", [True, False])
def test_preparing_on_the_cpu_keeps_freed_memory_as_the_settings_say(models, monkeypatch, reuse):
    calls = []
    monkeypatch.setattr(fast_path, "keep_freed_memory", lambda: calls.append(True) or True)
    prepare_fast_model(models["tiny"], FastPathSettings(reuse_freed_memory=reuse))
    assert calls == ([True] if reuse else [])


def _blocks_of_each_kind():
    """name → a block with random weights and folded BatchNorm, and an input [2, C, 13, 19] for it."""
    from remn.model.modules import ResBlock
    from remn.model.resnet import BasicBlock, Bottleneck
    torch.manual_seed(4)
    blocks = {
        "bottleneck, downsample, stride 2": (Bottleneck(24, 8, stride=2), 24),
        "bottleneck": (Bottleneck(32, 8), 32),
        "basic block, biased": (BasicBlock(16, 16), 16),
        "basic block, downsample": (BasicBlock(16, 24, stride=2), 16),
        "residual block": (ResBlock(24), 24),
        "residual block, downsample": (ResBlock(40, 24), 40),
    }
    made = {}
    for name, (block, channels) in blocks.items():
        block = random_statistics(block).eval().requires_grad_(False)
        fold_batchnorm(block)
        made[name] = (block, torch.randn(2, channels, 13, 19))
    return made


@pytest.mark.parametrize("channels_last", [True, False])  # False: an NCHW input, made channels-last by the block
@pytest.mark.parametrize("name", list(_blocks_of_each_kind()))
def test_fused_blocks_compute_the_separate_ops(name, channels_last):
    """fp32: the fused block matches the block run op by op to rounding. bf16 (weights held
    in bf16, under autocast as a bf16 trunk runs): its error against fp64 is no larger than
    twice the separate ops' own bf16 error (it rounds the sum once, they twice)."""
    block, x = _blocks_of_each_kind()[name]
    block.to(memory_format=torch.channels_last)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fused = fast_path.FUSED_FORMS[type(block)](block)
    with torch.inference_mode():
        want = block(x)
        got = fused(x)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        exact = copy.deepcopy(block).double()(x.bfloat16().double())
        bf16_block = copy.deepcopy(block)
        for module in bf16_block.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a block's input is its bf16 predecessor's output
            separate = bf16_block(x.bfloat16())
            together = fast_path.FUSED_FORMS[type(block)](bf16_block)(x.bfloat16())
    assert together.dtype == separate.dtype == torch.bfloat16
    separate_error = (separate.double() - exact).abs().max().item()
    assert (together.double() - exact).abs().max().item() <= 2 * separate_error + 1e-3 * exact.abs().max().item()


def test_fuse_pointwise_replaces_the_blocks_it_can(models):
    """Folded ResNet blocks and every residual block are fused; a ResNet block whose
    BatchNorm was kept stays as it is, and so does everything with the route off or compiled."""
    from remn.model.modules import ResBlock
    from remn.model.resnet import BasicBlock, Bottleneck
    model = models["tiny"]

    def kinds(settings):
        fast = prepare_fast_model(model, settings)
        return {kind.__name__ for kind in (Bottleneck, BasicBlock, ResBlock, *fast_path.FUSED_FORMS.values())
                if any(type(module) is kind for module in fast.modules())}

    fused = {"FusedBottleneck", "FusedBasicBlock", "FusedResBlock"}
    assert kinds(FastPathSettings(bf16="none")) == fused
    assert kinds(FastPathSettings(fold_batchnorm=False, bf16="none")) == {"Bottleneck", "BasicBlock", "FusedResBlock"}
    unfused = {"Bottleneck", "BasicBlock", "ResBlock"}
    assert kinds(FastPathSettings(fuse_pointwise=False, bf16="none")) == unfused
    assert kinds(FastPathSettings(channels_last=False, bf16="none")) == unfused
    with pytest.raises(ValueError, match="fuse_pointwise"):
        FastPathSettings(fuse_pointwise=1)
    with pytest.raises(ValueError, match="zero padding"):
        FusedConv(torch.nn.Conv2d(4, 4, 3, padding="same"))
