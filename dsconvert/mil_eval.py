"""Evaluate a saved `.mlpackage`'s ML Program with NumPy: a verifier, not a runtime.

Core ML predicts only on macOS, so on Linux nothing runs the converted packages. To prove that each package
computes what its TensorFlow graph computes, this module loads the package's ML Program back into coremltools'
MIL (the program plus the fp16/fp32 weights from `weights/weight.bin`) and evaluates the main function's ops in
program order, one NumPy handler per MIL op type, written from the op definitions in
`coremltools/converters/mil/mil/ops/defs/`.

Precision model (what "fp16" means here): every value is stored in the dtype the program declares for it
(fp16 vars are `np.float16` arrays, fp32 vars `np.float32`, ...). Each op reads its inputs exactly, computes
in float32 (linear/matmul accumulate in float32) and rounds its result once to its declared output dtype: an
fp16 op costs one fp16 rounding, and every `cast` (fp32 I/O <-> fp16 body) is applied for real. That models an
fp16 device with float32 accumulation; Core ML's kernels may accumulate differently, within the same order of
error. `precision="fp32"` instead keeps fp16-declared values in float32 (the fp16 weights keep their
fp16-rounded values): it separates "the program computes the same function" from "fp16 loses this much".

What the DeepSpeech packages contain: MIL's core `lstm` op (forward, output_sequence=True, sigmoid/tanh/tanh, no
peephole or clip), converted from the graph's `coreml` variant whose state is the last step's. coremltools'
`tf_lstm_to_core_lstm` pass makes that op only when the BlockLSTM's cell-state sequence feeds nothing but a
slice of its last step; upstream's masked graph (state gathered at step input_lengths-1) is instead unrolled by
`expand_tf_lstm` into a `while_loop` (gather, linear, split, sigmoid/tanh, scatter), which this evaluator runs
too, for packages converted before the change.

Inputs are checked as Core ML checks them: against the declared shape, range, or enumerated shapes (the
dynamic package's time axis is enumerated; its MIL program keeps that dimension symbolic, so the program is
evaluated at whichever enumerated length it is given). Where several inputs have enumerated shapes (the
batched static package: the windows and both states take B rows; the iOS 18 opset, macOS 15), Core ML takes
the k-th shape of every one of them together, so inputs whose shapes are each listed but are no one k's
combination are refused too (coremltools issue #2271: mixing them fails on a Mac).

A batch dimension is evaluated like any other: each op computes all rows at once, as Core ML's kernels do.
Not a runtime: no speed, and ops the DeepSpeech packages do not use are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Precision = Literal["program", "fp32"]
Handler = Callable[[dict[str, Any]], Any]

_MAX_LOOP_ITERATIONS = 1_000_000  # a while_loop that runs longer than this is a bug, not a long input


class MilEvalError(RuntimeError):
    """The package cannot be evaluated: unknown op, bad input, or a value that breaks the op's contract."""


@dataclass(frozen=True)
class InputSpec:
    """One input as the model description declares it: Core ML refuses predictions outside these bounds."""

    name: str
    dtype: np.dtype
    bounds: tuple[tuple[int, int], ...]  # (lower, upper) per dimension; upper -1 = unbounded
    # An input with enumerated shapes (ct.EnumeratedShapes) takes exactly these; bounds then span them.
    shapes: tuple[tuple[int, ...], ...] = ()

    def refuses(self, shape: tuple[int, ...]) -> bool:
        """Whether Core ML would refuse an input of this shape."""
        if self.shapes:
            return shape not in self.shapes
        return len(shape) != len(self.bounds) or any(
            n < lo or (hi >= 0 and n > hi) for n, (lo, hi) in zip(shape, self.bounds, strict=True)
        )


@dataclass(frozen=True)
class LoadedProgram:
    """A package's main function loaded once (weights included), to evaluate many times."""

    path: Path
    function: Any  # coremltools.converters.mil.mil.Function
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    # Const values in their declared dtype and float32 views of fp16 consts, per precision, made once: a loop
    # body's weights would otherwise be converted again at every step of every evaluation.
    const_cache: dict[tuple[str, str, int], Any] = field(default_factory=dict, repr=False, compare=False)


# --------------------------------------------------------------------------------------------------- loading


def _weights_dir(package: Path) -> Path:
    """The package's weights folder, found through Manifest.json like Core ML does (standard path as fallback)."""
    manifest = package / "Manifest.json"
    if manifest.is_file():
        items = json.loads(manifest.read_text(encoding="utf-8")).get("itemInfoEntries", {})
        for item in items.values():
            if item.get("name") == "weights" and item.get("author") == "com.apple.CoreML":
                return package / "Data" / item["path"]
    return package / "Data" / "com.apple.CoreML" / "weights"


def _input_specs(spec: Any) -> tuple[InputSpec, ...]:
    from coremltools.proto import FeatureTypes_pb2

    kinds = FeatureTypes_pb2.ArrayFeatureType
    dtypes = {
        kinds.FLOAT32: np.float32,
        kinds.FLOAT16: np.float16,
        kinds.INT32: np.int32,
        kinds.DOUBLE: np.float64,
    }
    specs = []
    for feature in spec.description.input:
        array = feature.type.multiArrayType
        ranges = array.shapeRange.sizeRanges
        # The MIL program keeps an enumerated dimension symbolic, like a ranged one: only the model
        # description says which shapes Core ML accepts.
        shapes = tuple(tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes)
        if ranges:
            bounds = tuple((int(r.lowerBound), int(r.upperBound)) for r in ranges)
        elif shapes:
            bounds = tuple((min(dims), max(dims)) for dims in zip(*shapes, strict=True))
        else:
            bounds = tuple((int(d), int(d)) for d in array.shape)
        if array.dataType not in dtypes:
            raise MilEvalError(f"input {feature.name}: unsupported multiarray data type {array.dataType}")
        specs.append(InputSpec(feature.name, np.dtype(dtypes[array.dataType]), bounds, shapes))
    return tuple(specs)


def load_program(path: str | Path) -> LoadedProgram:
    """Load an `.mlpackage`'s ML Program as MIL; const ops then carry their values (fp16 weights stay fp16)."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil
    from coremltools.models.utils import load_spec

    package = Path(path)
    if not package.is_dir():
        raise MilEvalError(f"{package} is not an .mlpackage directory")
    spec = load_spec(str(package))
    if spec.WhichOneof("Type") != "mlProgram":
        raise MilEvalError(f"{package} holds a {spec.WhichOneof('Type')} model, not an ML Program")
    program = load_mil(spec, spec.specificationVersion, file_weights_dir=str(_weights_dir(package)))
    function = program.functions["main"]
    return LoadedProgram(
        path=package,
        function=function,
        inputs=_input_specs(spec),
        output_names=tuple(var.name for var in function.outputs),
    )


def walk_ops(block: Any) -> Iterable[Any]:
    """A MIL block's (or function's) operations in program order, each followed by those of its nested blocks."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from walk_ops(inner)


def op_types(program: str | Path | LoadedProgram | Any) -> set[str]:
    """The MIL op types a package uses, nested blocks included (to see what a verifier must cover).

    Takes a package path, a `LoadedProgram`, or a coremltools MIL `Program` (what `ct.convert` keeps as
    `model._mil_program`: its main function is read, no package needed).
    """
    if isinstance(program, LoadedProgram):
        function = program.function
    elif isinstance(program, str | Path):
        function = load_program(program).function
    else:
        function = program.functions["main"]
    return {op.op_type for op in walk_ops(function)}


# ------------------------------------------------------------------------------------------------- evaluation


def _declared_dtype(var: Any, precision: Precision) -> np.dtype:
    from coremltools.converters.mil.mil import types

    dtype = np.dtype(types.nptype_from_builtin(var.dtype))
    if precision == "fp32" and dtype == np.float16:
        return np.dtype(np.float32)
    return dtype


def _as_declared(value: Any, var: Any, precision: Precision, op_label: str) -> np.ndarray:
    """Round a result to its declared dtype and check it against the declared (possibly symbolic) shape."""
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    array = np.asarray(value).astype(_declared_dtype(var, precision), copy=False)
    declared = var.shape
    if len(declared) != array.ndim or any(
        not is_symbolic(d) and int(d) != n for d, n in zip(declared, array.shape, strict=True)
    ):
        raise MilEvalError(
            f"{op_label}: result {var.name} has shape {array.shape}, program declares {declared}"
        )
    return array


def _compute_view(value: np.ndarray) -> np.ndarray:
    """Handlers compute in float32: fp16 inputs are upcast (exactly) here, other dtypes pass through."""
    return value.astype(np.float32) if value.dtype == np.float16 else value


class _Evaluator:
    def __init__(self, precision: Precision, const_cache: dict[tuple[str, str, int], Any]) -> None:
        self.precision = precision
        self.env: dict[int, np.ndarray] = {}  # id(Var) -> value; Var names repeat across nested blocks
        self.consts = const_cache

    def value(self, var: Any) -> np.ndarray:
        try:
            return self.env[id(var)]
        except KeyError:
            raise MilEvalError(f"value of {var.name} used before it was computed") from None

    def bind(self, var: Any, value: Any) -> None:
        self.env[id(var)] = value

    def run_block(self, block: Any) -> list[np.ndarray]:
        for op in block.operations:
            self.run_op(op)
        return [self.value(var) for var in block.outputs]

    def run_op(self, op: Any) -> None:
        label = f"{op.op_type} op {op.name!r}"
        if op.op_type == "const":
            var = op.outputs[0]
            key = ("value", self.precision, id(var))
            if key not in self.consts:
                value = var.val
                # Strings (cast's dtype, scatter's mode) stay strings.
                self.consts[key] = (
                    value if isinstance(value, str) else _as_declared(value, var, self.precision, label)
                )
            self.bind(var, self.consts[key])
            return
        if op.op_type == "while_loop":
            results = self.while_loop(op)
        else:
            handler = _HANDLERS.get(op.op_type)
            if handler is None:
                raise MilEvalError(
                    f"unsupported MIL op type {op.op_type!r} (op {op.name!r}): dsconvert.mil_eval has no handler "
                    f"for it; supported: {', '.join(sorted(supported_op_types()))}"
                )
            args = {name: self.argument(arg) for name, arg in op.inputs.items()}
            if op.op_type == "lstm":  # its state is rounded per step to the dtype it declares
                args["_step_dtype"] = _declared_dtype(op.outputs[2], self.precision)
            try:
                results = handler(args)
            except MilEvalError as exc:
                raise MilEvalError(f"{label}: {exc}") from exc
            except (ValueError, IndexError, TypeError) as exc:
                raise MilEvalError(f"{label} failed: {exc}") from exc
        if not isinstance(results, tuple | list):
            results = (results,)
        if len(results) != len(op.outputs):
            raise MilEvalError(f"{label}: handler gave {len(results)} results for {len(op.outputs)} outputs")
        for var, result in zip(op.outputs, results, strict=True):
            self.bind(var, _as_declared(result, var, self.precision, label))

    def argument(self, arg: Any) -> Any:
        if isinstance(arg, tuple | list):
            return [self.argument(a) for a in arg]
        value = self.value(arg)
        if isinstance(value, str):
            return value
        if arg.op is not None and arg.op.op_type == "const" and value.dtype == np.float16:
            key = ("view", self.precision, id(arg))
            if key not in self.consts:
                self.consts[key] = _compute_view(value)
            return self.consts[key]
        return _compute_view(value)

    def while_loop(self, op: Any) -> list[np.ndarray]:
        """Run `body` while `cond` holds; loop variables keep the dtypes the blocks declare."""
        cond, body = op.blocks
        state = [self.value(v) for v in op.inputs["loop_vars"]]
        for _ in range(_MAX_LOOP_ITERATIONS):
            for var, value in zip(cond.inputs, state, strict=True):
                self.bind(var, value)
            (keep_going,) = self.run_block(cond)
            if not bool(np.asarray(keep_going).reshape(-1)[0]):
                return state
            for var, value in zip(body.inputs, state, strict=True):
                self.bind(var, value)
            state = self.run_block(body)
        raise MilEvalError(f"while_loop {op.name!r} ran {_MAX_LOOP_ITERATIONS} iterations without stopping")


def evaluate(
    program: LoadedProgram, inputs: dict[str, np.ndarray], precision: Precision = "program"
) -> dict[str, np.ndarray]:
    """Evaluate a loaded program on `inputs` (by name); returns its outputs by name, in their declared dtypes.

    Inputs are converted to the declared I/O dtype (as Core ML's MLMultiArray conversion does) and checked
    against the declared shape bounds, so an input Core ML would refuse is refused here too.
    """
    if precision not in ("program", "fp32"):
        raise ValueError(f"precision must be 'program' or 'fp32', not {precision!r}")
    unknown = set(inputs) - {spec.name for spec in program.inputs}
    if unknown:
        raise MilEvalError(f"{program.path.name} has no inputs named {', '.join(sorted(unknown))}")
    evaluator = _Evaluator(precision, program.const_cache)
    for spec in program.inputs:
        if spec.name not in inputs:
            raise MilEvalError(f"{program.path.name} needs input {spec.name!r}")
        value = np.asarray(inputs[spec.name]).astype(spec.dtype, copy=False)
        if spec.refuses(value.shape):
            allowed = (
                f"not one of its enumerated shapes {list(spec.shapes)}"
                if spec.shapes
                else f"allowed per dimension {spec.bounds}"
            )
            raise MilEvalError(f"input {spec.name} has shape {value.shape}, {allowed}")
        var = program.function.inputs[spec.name]
        evaluator.bind(var, _as_declared(value, var, precision, f"input {spec.name}"))
    _check_combination(program, {spec.name: np.shape(inputs[spec.name]) for spec in program.inputs})
    outputs = evaluator.run_block(program.function)
    return dict(zip(program.output_names, outputs, strict=True))


def _check_combination(program: LoadedProgram, shapes: dict[str, tuple[int, ...]]) -> None:
    """Several inputs with enumerated shapes take them index for index: some k must give every input's shape
    (duplicates allowed, so each shape may sit at several k)."""
    enumerated = [spec for spec in program.inputs if spec.shapes]
    if len(enumerated) < 2:
        return
    common = set(range(len(enumerated[0].shapes)))
    for spec in enumerated:
        common &= {k for k, shape in enumerate(spec.shapes) if shape == tuple(shapes[spec.name])}
    if not common:
        fed = ", ".join(f"{spec.name} {tuple(shapes[spec.name])}" for spec in enumerated)
        raise MilEvalError(
            f"inputs {fed} are not one of the enumerated shape combinations (Core ML takes the k-th shape of "
            "every enumerated input together)"
        )


def evaluate_package(
    path: str | Path, inputs: dict[str, np.ndarray], precision: Precision = "program"
) -> dict[str, np.ndarray]:
    """Load a `.mlpackage` and evaluate it once (use `load_program` + `evaluate` to evaluate it many times)."""
    return evaluate(load_program(path), inputs, precision)


# --------------------------------------------------------------------------------------------------- handlers
# Each handler receives the op's inputs by name (float inputs as float32, tuples as lists, absent optional
# inputs missing) and returns its result(s); the caller rounds each to the declared dtype. Defaults below are
# the ones the op definitions document.

_HANDLERS: dict[str, Handler] = {}


def supported_op_types() -> set[str]:
    """Op types `evaluate` handles (plus const and while_loop, which the evaluator runs itself)."""
    return set(_HANDLERS) | {"const", "while_loop"}


def _handles(*names: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in names:
            _HANDLERS[name] = handler
        return handler

    return register


def _axis(axis: Any, rank: int) -> int:
    a = int(axis)
    if not -rank <= a < rank:
        raise MilEvalError(f"axis {a} out of range for rank {rank}")
    return a % rank


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
}


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Handler:
    # Broadcasting follows NumPy's rules, which the MIL elementwise_binary definition adopts.
    return lambda a: fn(a["x"], a["y"])


for _name, _fn in _BINARY.items():
    _HANDLERS[_name] = _binary(_fn)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^-x) written with tanh: the same function, without overflow warnings for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "logical_not": np.logical_not,
    "identity": lambda x: x,
}


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Handler:
    return lambda a: fn(a["x"])


for _name, _fn1 in _UNARY.items():
    _HANDLERS[_name] = _unary(_fn1)


@_handles("cast")
def _cast(a: dict[str, Any]) -> np.ndarray:
    # The conversion itself is the rounding to the declared output dtype (fp16<->fp32, bool->float, ...).
    if a["dtype"] not in ("fp16", "fp32", "int32", "bool", "int16", "uint16", "int8", "uint8"):
        raise MilEvalError(f"cast to {a['dtype']!r} is not supported")
    return a["x"]


@_handles("clip")
def _clip(a: dict[str, Any]) -> np.ndarray:
    return np.minimum(np.maximum(a["x"], a["alpha"]), a["beta"])


@_handles("linear")
def _linear(a: dict[str, Any]) -> np.ndarray:
    # weight is (D_out, D_in); bias (D_out,) defaults to zeros.
    y = np.matmul(a["x"], a["weight"].T)
    return y + a["bias"] if "bias" in a else y


@_handles("matmul")
def _matmul(a: dict[str, Any]) -> np.ndarray:
    x, y = a["x"], a["y"]
    if bool(a.get("transpose_x", False)) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if bool(a.get("transpose_y", False)) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@_handles("softmax")
def _softmax(a: dict[str, Any]) -> np.ndarray:
    x = a["x"]
    axis = _axis(a.get("axis", -1), x.ndim)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@_handles("transpose")
def _transpose(a: dict[str, Any]) -> np.ndarray:
    return np.transpose(a["x"], [int(p) for p in a["perm"]])


@_handles("reshape")
def _reshape(a: dict[str, Any]) -> np.ndarray:
    x, shape = a["x"], [int(s) for s in a["shape"]]
    if len(shape) == x.ndim:  # 0 copies the input's dimension when the ranks agree
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(x, shape)


@_handles("expand_dims")
def _expand_dims(a: dict[str, Any]) -> np.ndarray:
    # Negative axes count from the end of the output (NumPy's tuple-axis rule is the same).
    return np.expand_dims(a["x"], tuple(int(i) for i in a["axes"]))


@_handles("squeeze")
def _squeeze(a: dict[str, Any]) -> np.ndarray:
    x = a["x"]
    if "axes" not in a:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(_axis(i, x.ndim) for i in a["axes"]))


@_handles("tile")
def _tile(a: dict[str, Any]) -> np.ndarray:
    x, reps = a["x"], [int(r) for r in a["reps"]]
    if len(reps) != x.ndim:
        raise MilEvalError(f"tile reps {reps} do not match rank {x.ndim}")
    return np.tile(x, reps)


@_handles("concat")
def _concat(a: dict[str, Any]) -> np.ndarray:
    values = a["values"]
    axis = _axis(a["axis"], values[0].ndim)
    if bool(a.get("interleave", False)):
        # All inputs have one shape; their slices along `axis` alternate.
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@_handles("stack")
def _stack(a: dict[str, Any]) -> np.ndarray:
    values = a["values"]
    return np.stack(values, axis=_axis(a["axis"], values[0].ndim + 1))


@_handles("split")
def _split(a: dict[str, Any]) -> list[np.ndarray]:
    x = a["x"]
    axis = _axis(a["axis"], x.ndim)
    if "split_sizes" in a:
        edges = np.cumsum([int(s) for s in a["split_sizes"]])[:-1]
        return np.split(x, edges, axis=axis)
    n = int(a["num_splits"])
    if x.shape[axis] % n:
        raise MilEvalError(f"dimension {x.shape[axis]} is not divisible into {n} splits")
    return np.split(x, n, axis=axis)


@_handles("slice_by_index")
def _slice_by_index(a: dict[str, Any]) -> np.ndarray:
    x = a["x"]
    rank = x.ndim
    begin, end = [int(v) for v in a["begin"]], [int(v) for v in a["end"]]
    stride = [int(v) for v in a.get("stride", [1] * rank)]
    begin_mask = [bool(v) for v in a.get("begin_mask", [False] * rank)]
    end_mask = [bool(v) for v in a.get("end_mask", [False] * rank)]
    squeeze_mask = [bool(v) for v in a.get("squeeze_mask", [False] * rank)]
    index: list[int | slice] = []
    for d in range(rank):
        if squeeze_mask[d]:  # pure index at begin[d]; end and stride are ignored
            if not -x.shape[d] <= begin[d] < x.shape[d]:
                raise MilEvalError(f"index {begin[d]} out of range for dimension {x.shape[d]}")
            index.append(begin[d])
        else:  # a masked bound is open (None), which NumPy resolves for either stride sign
            index.append(
                slice(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d], stride[d])
            )
    return np.asarray(x[tuple(index)])


@_handles("gather")
def _gather(a: dict[str, Any]) -> np.ndarray:
    x, indices = a["x"], a["indices"].astype(np.int64)
    if int(a.get("batch_dims", 0)) != 0:
        raise MilEvalError("gather with batch_dims != 0 is not supported")
    axis = _axis(a.get("axis", 0), x.ndim)
    if np.any(indices < -x.shape[axis]) or np.any(indices >= x.shape[axis]):
        raise MilEvalError(f"gather indices {indices} out of range for dimension {x.shape[axis]}")
    return np.take(x, indices, axis=axis)


@_handles("gather_nd")
def _gather_nd(a: dict[str, Any]) -> np.ndarray:
    x, indices = a["x"], a["indices"].astype(np.int64)
    if int(a.get("batch_dims", 0)) != 0:
        raise MilEvalError("gather_nd with batch_dims != 0 is not supported")
    k = indices.shape[-1]
    bounds = np.asarray(x.shape[:k])
    if np.any(indices < -bounds) or np.any(indices >= bounds):
        raise MilEvalError(f"gather_nd indices {indices.tolist()} out of range for shape {x.shape}")
    # indices (..., k) address the first k dimensions; the rest are copied whole.
    return x[tuple(indices[..., i] for i in range(k))]


_SCATTER_MODES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "update": lambda old, new: new,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


@_handles("scatter")
def _scatter(a: dict[str, Any]) -> np.ndarray:
    data, indices, updates = a["data"], a["indices"].astype(np.int64), a["updates"]
    axis = _axis(a.get("axis", 0), data.ndim)
    mode = a.get("mode", "update")
    if mode not in _SCATTER_MODES or indices.ndim != 1:
        raise MilEvalError(f"scatter mode {mode!r} with indices of rank {indices.ndim} is not supported")
    combine = _SCATTER_MODES[mode]
    out = np.moveaxis(data.copy(), axis, 0)
    new = np.moveaxis(updates, axis, 0)
    if new.shape[0] != indices.shape[0] or new.shape[1:] != out.shape[1:]:
        raise MilEvalError(f"scatter updates {updates.shape} do not fit data {data.shape} at axis {axis}")
    for i, index in enumerate(indices):  # in order, so repeated indices combine like the op says
        if not -out.shape[0] <= index < out.shape[0]:
            raise MilEvalError(f"scatter index {index} out of range for dimension {out.shape[0]}")
        out[index] = combine(out[index], new[i])
    return np.moveaxis(out, 0, axis)


@_handles("shape")
def _shape(a: dict[str, Any]) -> np.ndarray:
    return np.asarray(a["x"].shape, dtype=np.int32)


@_handles("fill")
def _fill(a: dict[str, Any]) -> np.ndarray:
    return np.full([int(s) for s in a["shape"]], a.get("value", 0.0))


@_handles("range_1d")
def _range_1d(a: dict[str, Any]) -> np.ndarray:
    return np.arange(a["start"], a["end"], a["step"])


@_handles("select")
def _select(a: dict[str, Any]) -> np.ndarray:
    return np.where(a["cond"], a["a"], a["b"])


def _reduction(fn: Callable[..., Any]) -> Handler:
    def reduce(a: dict[str, Any]) -> np.ndarray:
        x = a["x"]
        axes = None if a.get("axes") is None else tuple(_axis(i, x.ndim) for i in a["axes"])
        return fn(x, axis=axes, keepdims=bool(a.get("keep_dims", False)))

    return reduce


_REDUCTIONS: dict[str, Callable[..., Any]] = {
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
}
for _name, _fnr in _REDUCTIONS.items():
    _HANDLERS[_name] = _reduction(_fnr)


_LSTM_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "linear": lambda x: x,
}


@_handles("lstm")
def _lstm(a: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MIL `lstm` (iOS15 recurrent.py; iOS17 only adds fp16), forward direction, as its definition states it.

    x (s, b, I); initial_h, initial_c (b, H); weight_ih (4H, I) and weight_hh (4H, H) with gate rows in the
    order input, forget, output, cell ("ifoz"); bias (4H,) = input + recurrent bias, default zeros. Per step:
    i, f, o = recurrent_activation(.), z = cell_activation(.), c = f*c + i*z, h = o*activation(c).
    Returns (all h (s, b, H) if output_sequence else last h (1, b, H), last h (b, H), last c (b, H)).

    Gates are computed in float32; h and c are rounded to the op's declared dtype after every step (an fp16
    op carries fp16 state from step to step; `_step_dtype`, set by the evaluator). Variants this verifier
    cannot pin down from the definition are refused rather than guessed: reverse/bidirectional (the output
    order is not stated), peephole (its terms are not in the equations), clip ("cell gate is clipped": before
    or after the activation is not stated), scaled_tanh/hard_sigmoid (implicit alpha/beta).
    """
    direction = a.get("direction", "forward")
    if direction != "forward":
        raise MilEvalError(f"lstm direction {direction!r} is not supported (forward only)")
    if "clip" in a or ("peephole" in a and np.any(a["peephole"])):
        raise MilEvalError("lstm with clip or non-zero peephole is not supported")
    acts = []
    for key, default in (
        ("recurrent_activation", "sigmoid"),
        ("cell_activation", "tanh"),
        ("activation", "tanh"),
    ):
        name = str(a.get(key, default)).lower()  # the definition validates them lower-cased
        if name not in _LSTM_ACTIVATIONS:
            raise MilEvalError(f"lstm {key} {name!r} is not supported")
        acts.append(_LSTM_ACTIVATIONS[name])
    gate_act, cell_act, out_act = acts
    x, w_ih, w_hh = a["x"], a["weight_ih"], a["weight_hh"]
    h, c = a["initial_h"], a["initial_c"]
    step_dtype = np.dtype(a.get("_step_dtype", np.float32))
    if x.ndim != 3:
        raise MilEvalError(f"lstm x must be (s, b, I), got {x.shape}")
    steps, batch, n_in = x.shape
    if steps == 0:
        raise MilEvalError("lstm over zero steps")
    hidden = w_hh.shape[1]
    bias = a.get("bias", np.zeros(4 * hidden, dtype=np.float32))
    expected = {
        "weight_ih": (w_ih.shape, (4 * hidden, n_in)),
        "weight_hh": (w_hh.shape, (4 * hidden, hidden)),
        "bias": (bias.shape, (4 * hidden,)),
        "initial_h": (h.shape, (batch, hidden)),
        "initial_c": (c.shape, (batch, hidden)),
    }
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise MilEvalError(f"lstm {name} has shape {tuple(got)}, expected {want}")
    # The x projection of all steps at once (independent of the recurrence), then one step at a time.
    gates_x = x @ w_ih.T + bias
    outputs = []
    for t in range(steps):
        gates = gates_x[t] + h @ w_hh.T
        i, f, o, z = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c = (gate_act(f) * c + gate_act(i) * cell_act(z)).astype(step_dtype).astype(np.float32)
        h = (gate_act(o) * out_act(c)).astype(step_dtype).astype(np.float32)
        outputs.append(h)
    sequence = np.stack(outputs) if bool(a.get("output_sequence", False)) else h[np.newaxis]
    return sequence, h, c
