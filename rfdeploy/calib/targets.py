"""Where an INT8 file will run decides how it is quantized.

* ``tensorrt``: explicit Q/DQ with signed int8 activations and weights, symmetric (zero-point 0),
  per-channel weights, biases in float; Q/DQ only on the inputs of Conv/Gemm/MatMul (TensorRT
  fuses the rest itself, and quantizes a Conv's fused, activated output for the next layer). This is what TensorRT 10/11 and TensorRT-RTX read (FACTS.md). On onnxruntime's CPU EP
  such a file runs slower than fp32: every Q/DQ pair the CPU kernels cannot fuse is executed as
  float arithmetic.
* ``cpu``: onnxruntime's x86 kernels (MLAS) are fastest on unsigned activations times signed
  weights (U8S8), with the operator format (QLinearConv, QLinearAdd, QLinearConcat, ... with
  int32 biases) so that tensors stay uint8 from op to op, and per-channel symmetric weights.
  ``reduce_range`` (7-bit weights) avoids the int16 saturation of the AVX2 U8S8 kernels on CPUs
  without VNNI; with VNNI (AVX512-VNNI, AVX-VNNI) it only costs accuracy, so it is off by default.
  The convolutions that produce the heads' logits and box deltas stay float (their outputs feed
  the float decode; a uint8 output would round every logit).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Int8Target:
    name: str
    quant_format: str  # "QDQ" or "QOperator"
    signed_activations: bool
    symmetric_activations: bool
    quantize_bias: bool
    # None: every op type onnxruntime's quantizer handles in this format
    op_types: tuple[str, ...] | None
    float_head_outputs: bool  # keep the convs that feed the float region in float
    quantize_outputs: bool  # Q/DQ on the outputs of quantized ops too (else only on their inputs)
    extra_options: dict = field(default_factory=dict)

    def resolved_op_types(self) -> tuple[str, ...]:
        if self.op_types is not None:
            return self.op_types
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        reg = QLinearOpsRegistry if self.quant_format == "QOperator" else QDQRegistry
        return tuple(sorted(reg))


TARGETS = {
    "tensorrt": Int8Target(
        name="tensorrt", quant_format="QDQ", signed_activations=True, symmetric_activations=True,
        quantize_bias=False, op_types=("Conv", "Gemm", "MatMul"), float_head_outputs=False,
        quantize_outputs=False,
        # Q/DQ on the inputs of Conv/Gemm/MatMul only, as TensorRT's explicit quantization wants: a Q/DQ on
        # a Conv's output would round the pre-activation (a ReLU6 input spans far more than [0, 6]), where
        # TensorRT fuses Conv + activation and quantizes once, for the next layer's input
        extra_options={"OpTypesToExcludeOutputQuantization": ["Conv", "Gemm", "MatMul"]},
    ),
    "cpu": Int8Target(
        name="cpu", quant_format="QOperator", signed_activations=False, symmetric_activations=False,
        quantize_bias=True, op_types=None, float_head_outputs=True, quantize_outputs=True,
    ),
}


def get_target(name: str) -> Int8Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {name!r}") from None
