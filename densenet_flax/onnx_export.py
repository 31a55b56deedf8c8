"""A small translator from a traced JAX function (its jaxpr) to ONNX.

  b, = jax.export.symbolic_shape('b')
  proto = onnx_export.to_onnx(fn, [jax.ShapeDtypeStruct((b, 48, 48, 1),
                                                        jnp.float32)])

Symbolic dimensions of the inputs stay symbolic in the graph (a dynamic
batch). It covers the primitives a DenseNet's eval-mode jaxpr holds, traced
with the generic kernels (layers.use_kernels('generic')), and a few more;
any other raises UnsupportedPrimitiveError naming it, so a model change that
brings a new one fails loudly. Nested jaxprs (jit, custom_jvp/vjp calls) are
translated from their forward bodies; whatever depends on constants only (the
weights' BN folding, the max pools' iota index arrays) is computed here with
NumPy and stored as initializers.

Why not a library: jax2onnx (0.17.1) pins orbax-checkpoint<0.11.37 against
this project's >=0.12.8, so installing it downgrades Orbax, and it pulls in
equinox, dm-pix, netron and huggingface-hub; tf2onnx cannot read our jax2tf
SavedModel, whose computation is StableHLO inside one XlaCallModule op.

Only onnx is needed here (imported inside the functions that build protos);
the models never import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

# Opset 18: Reduce* take their axes as inputs; onnxruntime >= 1.14 runs it.
OPSET = 18
IR_VERSION = 8  # the IR version of opset 18: older runtimes load the file

_INT64_MAX = np.iinfo(np.int64).max


class UnsupportedPrimitiveError(NotImplementedError):
  """The jaxpr holds a primitive (or a form of one) with no ONNX translation."""

  def __init__(self, primitive: str, detail: str = ''):
    self.primitive = primitive
    super().__init__(
      f'ONNX export: no translation for the JAX primitive {primitive!r}'
      + (f' ({detail})' if detail else '')
      + '. Supported: '
      + ', '.join(sorted(supported_primitives()))
    )


def to_onnx(
  fn: Callable[..., Any],
  args: Sequence[jax.ShapeDtypeStruct],
  *,
  input_names: Sequence[str] | None = None,
  output_names: Sequence[str] | None = None,
  graph_name: str = 'jax',
):
  """Traces `fn` at `args` (shapes may be symbolic) into an onnx.ModelProto."""
  closed = jax.make_jaxpr(fn)(*args)
  return jaxpr_to_onnx(
    closed,
    input_names=input_names,
    output_names=output_names,
    graph_name=graph_name,
  )


def jaxpr_to_onnx(
  closed: jax_core.ClosedJaxpr,
  *,
  input_names: Sequence[str] | None = None,
  output_names: Sequence[str] | None = None,
  graph_name: str = 'jax',
):
  """A ClosedJaxpr as an onnx.ModelProto; its consts become initializers."""
  from onnx import helper

  jaxpr = closed.jaxpr
  input_names = list(
    input_names or [f'input_{i}' for i in range(len(jaxpr.invars))]
  )
  output_names = list(
    output_names or [f'output_{i}' for i in range(len(jaxpr.outvars))]
  )
  if len(input_names) != len(jaxpr.invars):
    raise ValueError(
      f'{len(input_names)} input names for {len(jaxpr.invars)} inputs'
    )
  if len(output_names) != len(jaxpr.outvars):
    raise ValueError(
      f'{len(output_names)} output names for {len(jaxpr.outvars)} outputs'
    )
  builder = _Builder()
  for name, var in zip(input_names, jaxpr.invars):
    builder.add_input(name, var.aval)
  outs = builder.run(jaxpr, [np.asarray(c) for c in closed.consts], input_names)
  outputs = []
  for name, var, value in zip(output_names, jaxpr.outvars, outs):
    builder.node('Identity', [value], [name])
    outputs.append(_value_info(name, var.aval))
  graph = helper.make_graph(
    builder.nodes, graph_name, builder.inputs, outputs, builder.initializers
  )
  return helper.make_model(
    graph,
    opset_imports=[helper.make_opsetid('', OPSET)],
    ir_version=IR_VERSION,
    producer_name='densenet_flax.onnx_export',
  )


def supported_primitives() -> set[str]:
  return (
    set(_UNARY)
    | set(_BINARY)
    | set(_IDENTITY)
    | set(_CALLS)
    | set(_Builder.RULES)
  )


# --- shapes and dtypes --------------------------------------------------------


def _static(d) -> bool:
  return isinstance(d, (int, np.integer))


def _same_dim(a, b) -> bool:
  if _static(a) and _static(b):
    return int(a) == int(b)
  return not _static(a) and not _static(b) and str(a) == str(b)


def _onnx_dtype(dtype) -> int:
  from onnx import helper

  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _value_info(name: str, aval):
  from onnx import helper

  return helper.make_tensor_value_info(
    name,
    _onnx_dtype(aval.dtype),
    [int(d) if _static(d) else str(d) for d in aval.shape],
  )


def _perm_inverse(perm: Sequence[int]) -> list[int]:
  return [int(i) for i in np.argsort(perm)]


# --- the primitives -----------------------------------------------------------

# Elementwise: one ONNX op each, with NumPy's broadcasting (as jaxprs'
# size-1 and scalar operands need) and a NumPy version for folding.
_UNARY = {
  'exp': ('Exp', np.exp),
  'log': ('Log', np.log),
  'neg': ('Neg', np.negative),
  'sqrt': ('Sqrt', np.sqrt),
  'tanh': ('Tanh', np.tanh),
  'abs': ('Abs', np.abs),
  'sign': ('Sign', np.sign),
  'floor': ('Floor', np.floor),
  'ceil': ('Ceil', np.ceil),
  'logistic': ('Sigmoid', lambda x: 1 / (1 + np.exp(-x))),
  'rsqrt': (None, lambda x: 1 / np.sqrt(x)),
}
_BINARY = {
  'add': ('Add', np.add),
  'sub': ('Sub', np.subtract),
  'mul': ('Mul', np.multiply),
  'div': ('Div', None),
  'max': ('Max', np.maximum),
  'min': ('Min', np.minimum),
  'pow': ('Pow', np.power),
  'eq': ('Equal', np.equal),
  'lt': ('Less', np.less),
  'gt': ('Greater', np.greater),
  'le': ('LessOrEqual', np.less_equal),
  'ge': ('GreaterOrEqual', np.greater_equal),
}
_IDENTITY = ('stop_gradient', 'copy', 'copy_p')
# Calls whose body is translated in place: (param holding the jaxpr).
_CALLS = {
  'pjit': 'jaxpr',
  'jit': 'jaxpr',
  'closed_call': 'call_jaxpr',
  'core_call': 'call_jaxpr',
  'remat': 'jaxpr',
  'checkpoint': 'jaxpr',
  'custom_jvp_call': 'call_jaxpr',
  'custom_vjp_call': 'call_jaxpr',
  'custom_vjp_call_jaxpr': 'fun_jaxpr',
}


def _fold_numpy(name: str, params: dict, vals: list[np.ndarray]):
  """The primitive's value by NumPy, or None where only JAX computes it."""
  if name in _UNARY:
    return _UNARY[name][1](vals[0])
  if name in _BINARY and _BINARY[name][1] is not None:
    return _BINARY[name][1](*vals)
  if name == 'div' and np.issubdtype(vals[0].dtype, np.floating):
    return vals[0] / vals[1]
  if name in _IDENTITY:
    return vals[0]
  if name == 'broadcast_in_dim':
    return np.broadcast_to(
      vals[0].reshape(
        _inserted_ones(
          vals[0].shape, params['shape'], params['broadcast_dimensions']
        )
      ),
      params['shape'],
    )
  if name == 'squeeze':
    return np.squeeze(vals[0], axis=tuple(params['dimensions']))
  if name == 'reshape' and params.get('dimensions') is None:
    return vals[0].reshape(params['new_sizes'])
  if name == 'concatenate':
    return np.concatenate(vals, axis=params['dimension'])
  if name == 'transpose':
    return np.transpose(vals[0], params['permutation'])
  if name == 'convert_element_type':
    return vals[0].astype(params['new_dtype'])
  if name == 'iota':
    shape, dim = params['shape'], params['dimension']
    axis = np.arange(shape[dim], dtype=params['dtype'])
    return np.broadcast_to(
      axis.reshape([-1 if i == dim else 1 for i in range(len(shape))]), shape
    )
  return None


def _inserted_ones(operand_shape, shape, broadcast_dimensions) -> list:
  """broadcast_in_dim's operand with 1s where the new dimensions go."""
  out = [1] * len(shape)
  for d, i in zip(operand_shape, broadcast_dimensions):
    out[i] = d
  return out


class _Builder:
  """Walks jaxprs, emitting ONNX nodes; values are NumPy (known now) or
  tensor names (known at run time)."""

  def __init__(self):
    self.nodes, self.inputs, self.initializers = [], [], []
    self._count = 0
    self._const_names: dict[Any, str] = {}
    self._keep: list[np.ndarray] = []  # so that ids in _const_names stay valid
    self._dim_sources: dict[str, tuple[str, int]] = {}
    self._dim_tensors: dict[str, str] = {}

  # --- bookkeeping ---

  def fresh(self, prefix: str = 't') -> str:
    self._count += 1
    return f'{prefix}_{self._count}'

  def add_input(self, name: str, aval) -> None:
    self.inputs.append(_value_info(name, aval))
    for axis, d in enumerate(aval.shape):
      if not _static(d):
        self._dim_sources.setdefault(str(d), (name, axis))

  def node(self, op: str, inputs: Sequence[Any], outputs=None, **attrs):
    """Appends an `op` node (NumPy inputs become initializers); returns its
    output name(s)."""
    from onnx import helper

    outputs = list(outputs or [self.fresh()])
    self.nodes.append(
      helper.make_node(
        op,
        [self.tensor(i) for i in inputs],
        outputs,
        name=self.fresh(op),
        **attrs,
      )
    )
    return outputs[0] if len(outputs) == 1 else outputs

  def const(self, value) -> str:
    """An initializer holding `value` (shared by equal small constants)."""
    from onnx import numpy_helper

    value = np.asarray(value)
    key = (
      (value.dtype.str, value.shape, value.tobytes())
      if value.size <= 16
      else id(value)
    )
    if key not in self._const_names:
      name = self.fresh('c')
      self.initializers.append(
        numpy_helper.from_array(np.ascontiguousarray(value), name)
      )
      self._const_names[key] = name
      self._keep.append(value)
    return self._const_names[key]

  def tensor(self, value) -> str:
    return value if isinstance(value, str) else self.const(value)

  def int64s(self, values) -> str:
    return self.const(np.asarray(values, np.int64))

  def dim_tensor(self, d) -> str:
    """A 1-element int64 tensor of the symbolic dimension `d` at run time."""
    key = str(d)
    if key not in self._dim_sources:
      raise UnsupportedPrimitiveError(
        'shape', f'the dimension {key} is not an input dimension'
      )
    if key not in self._dim_tensors:
      name, axis = self._dim_sources[key]
      self._dim_tensors[key] = self.node(
        'Shape', [name], start=axis, end=axis + 1
      )
    return self._dim_tensors[key]

  def shape_tensor(self, dims) -> str:
    """A 1-D int64 tensor of `dims` (ints and input dimensions)."""
    if all(_static(d) for d in dims):
      return self.int64s([int(d) for d in dims])
    pieces, run = [], []
    for d in dims:
      if _static(d):
        run.append(int(d))
        continue
      if run:
        pieces.append(self.int64s(run))
        run = []
      pieces.append(self.dim_tensor(d))
    if run:
      pieces.append(self.int64s(run))
    return self.node('Concat', pieces, axis=0)

  def reshape(self, x: str, dims) -> str:
    symbolic = [d for d in dims if not _static(d)]
    if len(symbolic) <= 1:
      target = self.int64s([int(d) if _static(d) else -1 for d in dims])
    else:
      target = self.shape_tensor(dims)
    return self.node('Reshape', [x, target])

  def transpose(self, x, perm: Sequence[int]):
    perm = [int(p) for p in perm]
    if perm == list(range(len(perm))):
      return x
    if not isinstance(x, str):
      return np.transpose(x, perm)
    return self.node('Transpose', [x], perm=perm)

  # --- walking jaxprs ---

  def run(
    self, jaxpr: jax_core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]
  ) -> list:
    env = {}

    def read(v):
      if isinstance(v, jax_core.Literal):
        return np.asarray(v.val, dtype=v.aval.dtype)
      return env[v]

    for var, value in zip(jaxpr.constvars, consts):
      env[var] = value
    for var, value in zip(jaxpr.invars, args):
      env[var] = value
    for eqn in jaxpr.eqns:
      outs = self.equation(eqn, [read(v) for v in eqn.invars])
      for var, value in zip(eqn.outvars, outs):
        if not isinstance(var, jax_core.DropVar):
          env[var] = value
    return [read(v) for v in jaxpr.outvars]

  def equation(self, eqn, vals: list) -> list:
    name = eqn.primitive.name
    if name in _CALLS:
      return self.call(eqn, vals)
    if all(not isinstance(v, str) for v in vals) and all(
      _static(d) for v in eqn.outvars for d in v.aval.shape
    ):
      return self.fold(eqn, vals)
    if name in _IDENTITY:
      return vals
    if name in _UNARY:
      op = _UNARY[name][0]
      if op is None:  # rsqrt
        return [self.node('Reciprocal', [self.node('Sqrt', [vals[0]])])]
      return [self.node(op, [vals[0]])]
    if name in _BINARY:
      return [self.node(_BINARY[name][0], vals)]
    rule = self.RULES.get(name)
    if rule is None:
      raise UnsupportedPrimitiveError(
        name, ', '.join(str(v.aval) for v in eqn.invars)
      )
    out = rule(self, eqn, vals, **eqn.params)
    return out if eqn.primitive.multiple_results else [out]

  def call(self, eqn, vals):
    sub = eqn.params[_CALLS[eqn.primitive.name]]
    consts = []
    if isinstance(sub, jax_core.ClosedJaxpr):
      sub, consts = sub.jaxpr, [np.asarray(c) for c in sub.consts]
    if len(sub.invars) != len(vals):
      raise UnsupportedPrimitiveError(
        eqn.primitive.name, f'{len(vals)} operands for {len(sub.invars)} inputs'
      )
    return self.run(sub, consts, vals)

  def fold(self, eqn, vals) -> list:
    """An equation whose inputs are all known here: its value, not a node."""
    out = _fold_numpy(eqn.primitive.name, eqn.params, vals)
    if out is None:
      out = eqn.primitive.bind(*vals, **eqn.params)
    outs = out if eqn.primitive.multiple_results else [out]
    return [
      np.asarray(o, dtype=v.aval.dtype) for o, v in zip(outs, eqn.outvars)
    ]

  # --- the other primitives: rule(self, eqn, vals, **params) ---

  def _convert_element_type(self, eqn, vals, *, new_dtype, **_):
    if np.dtype(new_dtype) == np.dtype(eqn.invars[0].aval.dtype):
      return vals[0]
    return self.node('Cast', [vals[0]], to=_onnx_dtype(new_dtype))

  def _broadcast_in_dim(self, eqn, vals, *, shape, broadcast_dimensions, **_):
    operand = eqn.invars[0].aval.shape
    ones = _inserted_ones(operand, shape, broadcast_dimensions)
    x = vals[0]
    if len(ones) != len(operand):
      x = self.reshape(x, ones)
    if all(_same_dim(a, b) for a, b in zip(ones, shape)):
      return x
    # Expand broadcasts like NumPy: 1 keeps a dimension as it is.
    target = [1 if _same_dim(a, b) else b for a, b in zip(ones, shape)]
    return self.node('Expand', [x, self.shape_tensor(target)])

  def _reshape_to_output(self, eqn, vals, **params):
    # reshape's `dimensions` transposes first; squeeze's names the dropped
    # size-1 axes, which a reshape to the output shape drops as well.
    if eqn.primitive.name == 'reshape' and params.get('dimensions') is not None:
      raise UnsupportedPrimitiveError('reshape', 'with dimensions')
    return self.reshape(vals[0], eqn.outvars[0].aval.shape)

  def _transpose(self, eqn, vals, *, permutation, **_):
    return self.transpose(vals[0], permutation)

  def _concatenate(self, eqn, vals, *, dimension, **_):
    return self.node('Concat', vals, axis=int(dimension))

  def _reduce(op):
    def rule(self, eqn, vals, *, axes, **_):
      return self.node(op, [vals[0], self.int64s(list(axes))], keepdims=0)

    return rule

  def _select_n(self, eqn, vals, **_):
    if len(vals) != 3 or eqn.invars[0].aval.dtype != np.bool_:
      raise UnsupportedPrimitiveError('select_n', 'only a boolean choice of 2')
    pred, on_false, on_true = vals
    return self.node('Where', [pred, on_true, on_false])

  def _conv_general_dilated(
    self,
    eqn,
    vals,
    *,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    **_,
  ):
    if any(d != 1 for d in lhs_dilation) or batch_group_count != 1:
      raise UnsupportedPrimitiveError(
        'conv_general_dilated', 'lhs_dilation or batch_group_count'
      )
    if isinstance(padding, str) or any(p < 0 for pair in padding for p in pair):
      raise UnsupportedPrimitiveError(
        'conv_general_dilated', f'padding {padding}'
      )
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    # ONNX's Conv is NCHW x OIHW -> NCHW; the specs list (batch/out feature,
    # feature/in feature, spatial...) axes in that order.
    x = self.transpose(vals[0], lhs_spec)
    w = self.transpose(vals[1], rhs_spec)
    y = self.node(
      'Conv',
      [x, w],
      strides=[int(s) for s in window_strides],
      pads=[int(lo) for lo, _ in padding] + [int(hi) for _, hi in padding],
      dilations=[int(d) for d in rhs_dilation],
      group=int(feature_group_count),
    )
    return self.transpose(y, _perm_inverse(out_spec))

  def _dot_general(self, eqn, vals, *, dimension_numbers, **_):
    (lc, rc), (lb, rb) = dimension_numbers
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    if (
      not lb
      and len(lc) == 1
      and lc[0] == lhs.ndim - 1
      and rhs.ndim == 2
      and len(rc) == 1
    ):
      w = vals[1] if rc[0] == 0 else self.transpose(vals[1], (1, 0))
      out = self.node('MatMul', [vals[0], w])
    else:
      letters = iter('abcdefghijklmnopqrstuvwxyz')
      lhs_letters = [next(letters) for _ in range(lhs.ndim)]
      rhs_letters = [next(letters) for _ in range(rhs.ndim)]
      for i, j in zip((*lc, *lb), (*rc, *rb)):
        rhs_letters[j] = lhs_letters[i]
      out_letters = (
        [lhs_letters[i] for i in lb]
        + [c for i, c in enumerate(lhs_letters) if i not in lc and i not in lb]
        + [c for j, c in enumerate(rhs_letters) if j not in rc and j not in rb]
      )
      equation = (
        ''.join(lhs_letters)
        + ','
        + ''.join(rhs_letters)
        + '->'
        + ''.join(out_letters)
      )
      out = self.node('Einsum', vals, equation=equation)
    if np.dtype(eqn.outvars[0].aval.dtype) != np.dtype(lhs.dtype):
      out = self.node('Cast', [out], to=_onnx_dtype(eqn.outvars[0].aval.dtype))
    return out

  def _pool_layout(
    self, name, shape, window_dimensions, window_strides, padding, base_dilation
  ):
    """(perm to ONNX's N, C, spatial... layout, spatial axes) of a window."""
    spatial = [
      i
      for i in range(len(shape))
      if window_dimensions[i] != 1
      or window_strides[i] != 1
      or tuple(padding[i]) != (0, 0)
    ]
    others = [i for i in range(len(shape)) if i not in spatial]
    if (
      len(others) != 2
      or not spatial
      or any(d != 1 for d in base_dilation)
      or any(p < 0 for pair in padding for p in pair)
    ):
      raise UnsupportedPrimitiveError(
        name,
        'windows over other than all but two axes, base dilation or '
        'negative padding',
      )
    return others + spatial, spatial

  def _pool(self, op, eqn, vals, params, **attributes):
    """ONNX's `op` over reduce_window's spatial axes, moved channels first
    and back: (pooled tensor in the operand's layout, window sizes)."""
    window, strides, padding = (
      params['window_dimensions'],
      params['window_strides'],
      params['padding'],
    )
    perm, spatial = self._pool_layout(
      eqn.primitive.name,
      eqn.invars[0].aval.shape,
      window,
      strides,
      padding,
      params['base_dilation'],
    )
    if op == 'MaxPool':  # AveragePool takes no dilations (checked: all 1)
      attributes['dilations'] = [
        int(params['window_dilation'][i]) for i in spatial
      ]
    kernel = [int(window[i]) for i in spatial]
    y = self.node(
      op,
      [self.transpose(vals[0], perm)],
      kernel_shape=kernel,
      strides=[int(strides[i]) for i in spatial],
      pads=[int(padding[i][0]) for i in spatial]
      + [int(padding[i][1]) for i in spatial],
      **attributes,
    )
    return self.transpose(y, _perm_inverse(perm)), kernel

  def _reduce_window_sum(self, eqn, vals, **params):
    if any(d != 1 for d in params['window_dilation']):
      raise UnsupportedPrimitiveError('reduce_window_sum', 'window dilation')
    # An average pool counting the zero padding, times the window's size.
    y, kernel = self._pool(
      'AveragePool', eqn, vals, params, count_include_pad=1
    )
    return self.node(
      'Mul', [y, np.asarray(np.prod(kernel), eqn.outvars[0].aval.dtype)]
    )

  def _reduce_window_max(self, eqn, vals, **params):
    # MaxPool's padding never wins the max: reduce_window_max's -inf.
    return self._pool('MaxPool', eqn, vals, params)[0]

  def _pad(self, eqn, vals, *, padding_config, **_):
    if any(
      interior != 0 or lo < 0 or hi < 0 for lo, hi, interior in padding_config
    ):
      raise UnsupportedPrimitiveError('pad', 'interior or negative padding')
    pads = [int(lo) for lo, _, _ in padding_config] + [
      int(hi) for _, hi, _ in padding_config
    ]
    return self.node(
      'Pad', [vals[0], self.int64s(pads), vals[1]], mode='constant'
    )

  def _slice(self, eqn, vals, *, start_indices, limit_indices, strides, **_):
    shape = eqn.invars[0].aval.shape
    strides = strides or (1,) * len(shape)
    axes, starts, ends, steps = [], [], [], []
    for axis, (start, limit, step, d) in enumerate(
      zip(start_indices, limit_indices, strides, shape)
    ):
      if _same_dim(start, 0) and _same_dim(limit, d) and step == 1:
        continue
      if not (
        _static(start)
        and _static(step)
        and (_static(limit) or _same_dim(limit, d))
      ):
        raise UnsupportedPrimitiveError('slice', 'symbolic bounds')
      axes.append(axis)
      starts.append(int(start))
      ends.append(int(limit) if _static(limit) else _INT64_MAX)
      steps.append(int(step))
    if not axes:
      return vals[0]
    return self.node(
      'Slice',
      [
        vals[0],
        self.int64s(starts),
        self.int64s(ends),
        self.int64s(axes),
        self.int64s(steps),
      ],
    )

  def _gather(self, eqn, vals, *, dimension_numbers, slice_sizes, mode, **_):
    """Gathers at constant indices (jnp's indexing and the max pools'
    strided views): Slice, Transpose and Reshape when each index component
    is constant or an arithmetic progression along an index axis of its
    own; else GatherND, for single elements along the indexed axes."""
    dn = dimension_numbers
    shape = eqn.invars[0].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    indexed = [int(d) for d in dn.start_index_map]
    collapsed = {int(d) for d in dn.collapsed_slice_dims}
    if (
      dn.operand_batching_dims
      or not collapsed <= set(indexed)
      or any(
        not _same_dim(slice_sizes[d], shape[d])
        for d in range(len(shape))
        if d not in indexed
      )
    ):
      raise UnsupportedPrimitiveError(
        'gather', 'of other than whole slices along the unindexed axes'
      )
    if isinstance(vals[1], str):
      raise UnsupportedPrimitiveError(
        'gather', 'with indices computed at run time'
      )
    if any(not _static(shape[d]) for d in indexed):
      raise UnsupportedPrimitiveError('gather', 'along a symbolic axis')
    sizes = [int(slice_sizes[d]) for d in indexed]
    indices = np.asarray(vals[1]).astype(np.int64)
    bounds = np.asarray([int(shape[d]) - s for d, s in zip(indexed, sizes)])
    if np.any((indices < 0) | (indices > bounds)):
      if 'FILL' in str(mode):
        raise UnsupportedPrimitiveError(
          'gather', 'out-of-bounds indices in fill mode'
        )
      indices = np.clip(indices, 0, bounds)  # XLA clamps the windows
    offset_dims = [int(d) for d in dn.offset_dims]
    batch_pos = [i for i in range(len(out_shape)) if i not in offset_dims]
    # Output position of each operand dimension that has one.
    out_pos = dict(
      zip([d for d in range(len(shape)) if d not in collapsed], offset_dims)
    )
    lines = _index_lines(indices)
    if lines is not None and all(
      axis is None or size == 1 for (axis, _, _, _), size in zip(lines, sizes)
    ):
      starts, ends, steps = [], [], []
      for (axis, start, step, count), size in zip(lines, sizes):
        starts.append(start)
        ends.append(start + step * (count - 1) + size)
        steps.append(step)
      x = self.node(
        'Slice',
        [
          vals[0],
          self.int64s(starts),
          self.int64s(ends),
          self.int64s(indexed),
          self.int64s(steps),
        ],
      )
      for d, (axis, _, _, _) in zip(indexed, lines):
        if axis is not None:  # a progression: an index axis of the output
          out_pos[d] = batch_pos[axis]
      # Dimensions with an output position go there in order; the rest have
      # size 1, and the Reshape drops them (or adds the output's size-1 axes).
      kept = sorted(out_pos, key=out_pos.get)
      x = self.transpose(
        x, kept + [d for d in range(len(shape)) if d not in out_pos]
      )
      if len(kept) == len(shape) and len(kept) == len(out_shape):
        return x
      return self.reshape(x, out_shape)
    if sorted(indexed) != sorted(collapsed):
      raise UnsupportedPrimitiveError(
        'gather', 'of windows at indices other than a strided grid'
      )
    x = self.transpose(
      vals[0], indexed + [d for d in range(len(shape)) if d not in indexed]
    )
    g = self.node('GatherND', [x, indices])
    # GatherND gives the index axes, then the others in operand order.
    perm = [0] * len(out_shape)
    for k, pos in enumerate(batch_pos):
      perm[pos] = k
    for m, pos in enumerate(offset_dims):
      perm[pos] = len(batch_pos) + m
    return self.transpose(g, perm)

  RULES = {
    'convert_element_type': _convert_element_type,
    'broadcast_in_dim': _broadcast_in_dim,
    'reshape': _reshape_to_output,
    'squeeze': _reshape_to_output,
    'transpose': _transpose,
    'concatenate': _concatenate,
    'reduce_sum': _reduce('ReduceSum'),
    'reduce_max': _reduce('ReduceMax'),
    'reduce_min': _reduce('ReduceMin'),
    'select_n': _select_n,
    'conv_general_dilated': _conv_general_dilated,
    'dot_general': _dot_general,
    'reduce_window_sum': _reduce_window_sum,
    'reduce_window_max': _reduce_window_max,
    'pad': _pad,
    'slice': _slice,
    'gather': _gather,
  }
  del _reduce


def _index_lines(indices: np.ndarray):
  """Per index component: (index axis, start, step, count) when it is
  start + step * i along that axis (step >= 1) and constant along the others,
  (None, value, 1, 1) when constant; None unless every component is one of
  these, each on an axis of its own, and every other index axis has size 1."""
  batch_shape = indices.shape[:-1]
  lines, used = [], set()
  for k in range(indices.shape[-1]):
    component = indices[..., k]
    varying = [
      a
      for a in range(len(batch_shape))
      if batch_shape[a] > 1 and np.any(np.diff(component, axis=a) != 0)
    ]
    if not varying:
      lines.append(
        (None, int(component.flat[0]) if component.size else 0, 1, 1)
      )
      continue
    (axis,) = varying if len(varying) == 1 else (None,)
    if axis is None or axis in used:
      return None
    used.add(axis)
    line = np.moveaxis(component, axis, 0).reshape(batch_shape[axis], -1)[:, 0]
    step = int(line[1] - line[0])
    if step < 1 or np.any(line != line[0] + step * np.arange(len(line))):
      return None
    lines.append((axis, int(line[0]), step, len(line)))
  if any(size > 1 and a not in used for a, size in enumerate(batch_shape)):
    return None
  return lines
