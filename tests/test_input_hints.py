"""Input-shape hints inferred from a --calib npz (dfq_onnx/core/input_hints.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from dfq_onnx.models import builders, exported, signal_builders, token_builders

import dfq_onnx
from dfq_onnx.core import declared_io, ir
from dfq_onnx.core.errors import PassError
from dfq_onnx.core.input_hints import (
    _config_audio,
    npz_shapes,
    with_calib_hints,
    with_config_hints,
    with_graph_hints,
)
from dfq_onnx.core.options import QuantizeOptions


def _npz(tmp_path, shape=(6, 3, 8, 8), name="input"):
    path = tmp_path / "calib.npz"
    np.savez(path, **{name: np.random.default_rng(0).random(shape, dtype=np.float32)})
    return str(path)


def test_npz_shapes_reads_the_headers(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.zeros((5, 3, 2), np.float32), b=np.zeros((5, 7), np.int64))
    assert npz_shapes(path) == {"a": (5, 3, 2), "b": (5, 7)}
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert npz_shapes(tmp_path / "bad.npz") == {}


def test_dynamic_spatial_dims_are_sized_by_the_npz(tmp_path):
    source = builders.conv_bn_relu(hw=None)
    calib = _npz(tmp_path)
    opts = with_calib_hints(source, QuantizeOptions(calib=calib))
    assert opts.input_shapes == {"input": (1, 3, 8, 8)}
    # the user's hint wins; a static model or a synthetic compile gets none
    user = QuantizeOptions(calib=calib, input_shapes={"input": (1, 3, 4, 4)})
    assert with_calib_hints(source, user).input_shapes == {"input": (1, 3, 4, 4)}
    assert with_calib_hints(builders.conv_bn_relu(), QuantizeOptions(calib=calib)).input_shapes == {}
    assert with_calib_hints(source, QuantizeOptions()).input_shapes == {}


def test_a_wrong_rank_gives_no_hint(tmp_path):
    source = builders.conv_bn_relu(hw=None)
    assert with_calib_hints(source, QuantizeOptions(calib=_npz(tmp_path, (6, 3, 8)))).input_shapes == {}


def test_inferred_hint_compiles_as_the_explicit_one(tmp_path):
    source = builders.conv_bn_relu(hw=None)
    before = source.SerializeToString()
    calib = _npz(tmp_path)
    inferred, report = dfq_onnx.quantize(source, calib=calib, progress=False, use_cache=False)
    explicit, _ = dfq_onnx.quantize(source, calib=calib, input_shapes={"input": (1, 3, 8, 8)},
                                    progress=False, use_cache=False)
    assert source.SerializeToString() == before
    assert inferred.SerializeToString() == explicit.SerializeToString()
    assert declared_io.value_info_shape(inferred.graph.input[0]) == ["N", 3, "H", "W"]   # still drop-in
    assert dict(report.model["options"]["input_shapes"]) == {"input": (1, 3, 8, 8)}


def test_calibration_chunks_are_sized_from_the_npz_rows(tmp_path):
    """Unsized spatial dims made the footprint rule see ~nothing per row (millions of rows per ORT
    call: every calibration row at once); sized by the npz, the chunk follows the real row."""
    source = builders.conv_bn_relu(hw=None)
    _, small = dfq_onnx.quantize(source, calib=_npz(tmp_path, (4, 3, 8, 8)), progress=False, use_cache=False)
    _, large = dfq_onnx.quantize(source, calib=_npz(tmp_path, (4, 3, 64, 64)), progress=False,
                                 use_cache=False)
    rows = small.notes["rows_per_call"]["calibrate"], large.notes["rows_per_call"]["calibrate"]
    assert rows[1] < rows[0] < 10**6 and 40 < rows[0] / rows[1] < 90      # ~64x the pixels per row


def test_a_vision_transformers_image_size_comes_from_its_position_table():
    """Hugging Face ViT exports declare pixel_values [batch, channels, height, width] all dynamic; the
    patch embedding (4 x 4, stride 4) and the table of 4 x 4 + 1 positions fix 3 x 16 x 16."""
    source = exported.patch_encoder(size=16, patch=4)
    assert with_graph_hints(source, QuantizeOptions()).input_shapes == {"pixel_values": (1, 3, 16, 16)}
    user = QuantizeOptions(input_shapes={"pixel_values": (1, 3, 32, 32)})
    assert with_graph_hints(source, user).input_shapes == {"pixel_values": (1, 3, 32, 32)}
    assert with_graph_hints(builders.conv_bn_relu(hw=None), QuantizeOptions()).input_shapes == {}
    clip = exported.patch_encoder(size=24, patch=4, clip=True)      # Cast first; Gather(table, ids)
    assert with_graph_hints(clip, QuantizeOptions()).input_shapes == {"pixel_values": (1, 3, 24, 24)}
    out, _ = dfq_onnx.quantize(source, calib="noise", progress=False, latency_check=False)
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim] == ["N", "C", "H", "W"]


def test_a_hugging_face_exports_config_files_size_its_image_input(tmp_path):
    """Optimum writes config.json / preprocessor_config.json beside model.onnx; their image size is what
    the model is fed (the processor's crop when it center-crops), so --input-shape is not needed."""
    source = builders.conv_bn_relu(hw=None)
    path = tmp_path / "model.onnx"
    ir.save_model(source, path)
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {}       # no files
    (tmp_path / "config.json").write_text(json.dumps({"image_size": 16, "num_channels": 3}))
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {"input": (1, 3, 16, 16)}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 20}, "do_center_crop": True, "crop_size": {"height": 12, "width": 10}}))
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {"input": (1, 3, 12, 10)}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 20}}))
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {"input": (1, 3, 20, 20)}
    user = QuantizeOptions(input_shapes={"input": (1, 3, 8, 8)})
    assert with_config_hints(path, source, user).input_shapes == {"input": (1, 3, 8, 8)}
    assert with_config_hints(source, source, QuantizeOptions()).input_shapes == {}       # not a path
    out, _ = dfq_onnx.quantize(path, calib="noise", progress=False, latency_check=False)
    assert out.graph.input[0].type.tensor_type.shape.dim[2].dim_param      # the written model stays dynamic


def test_an_audio_feature_extractors_config_sizes_a_waveform_input(tmp_path, caplog):
    """wav2vec2 / HuBERT exports declare input_values [batch, sequence_length]: the compile asked for
    --input-shape. A raw-waveform feature extractor (feature_size 1) beside the model gives its
    sampling_rate: 1 s of audio, with a warning; a log-mel one (Whisper) feature_size x nb_max_frames."""
    source = signal_builders.waveform_classifier(samples="T")
    path = tmp_path / "model.onnx"
    ir.save_model(source, path)
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 400}))
    with caplog.at_level(logging.WARNING):
        assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {"audio": (1, 400)}
    assert "1 s at preprocessor_config.json's sampling_rate 400" in caplog.text
    out, _ = dfq_onnx.quantize(path, progress=False, latency_check=False, use_cache=False)
    assert out.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "T"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 80, "nb_max_frames": 3000, "sampling_rate": 16000}))
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {}      # rank 2: not mel
    assert _config_audio(tmp_path, 3) == ((80, 3000), "preprocessor_config.json")


def test_a_feature_extractors_size_is_not_given_to_another_models_float_input(tmp_path):
    """Optimum writes Whisper's preprocessor_config.json beside decoder_model.onnx too, whose float input is
    encoder_hidden_states [batch, encoder_sequence_length, D]: the log-mel size 80 x 3000 was hinted for it
    and Normalize refused the hint ("axis 2 is 3000, but the model fixes it at D")."""
    source = token_builders.token_decoder_cross(enc_len="E")
    path = tmp_path / "decoder_model.onnx"
    ir.save_model(source, path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 80, "nb_max_frames": 3000, "sampling_rate": 16000}))
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {}
    out, _ = dfq_onnx.quantize(path, progress=False, latency_check=False, use_cache=False)
    dims = out.graph.input[1].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", "E", 32]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 80, "nb_max_frames": 32, "sampling_rate": 16000}))
    assert with_config_hints(path, source, QuantizeOptions()).input_shapes == {"encoder_states": (1, 80, 32)}


def test_the_shape_error_fills_in_the_channels_the_first_conv_reads():
    source = builders.conv_bn_relu(hw=None)
    source.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "channels"
    with pytest.raises(PassError, match=r"--input-shape input:1,3,<"):
        dfq_onnx.quantize(source, progress=False, use_cache=False)


def test_synthesize_infers_the_image_size_as_quantize_does():
    """`dfq-onnx synthesize` on a ViT export with every pixel_values dimension dynamic asked for
    --input-shape while `quantize` inferred it."""
    from dfq_onnx import api

    result = api.synthesize(exported.patch_encoder(size=16, patch=4), samples=2, steps=1, use_cache=False,
                            progress=False)
    assert result.inputs["pixel_values"].shape == (2, 3, 16, 16)
