"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3): 2.25x fewer multiplies.

Each 2x2 block of output comes from a 4x4 tile of input. The tiles and the kernel go through
small fixed transforms (adds and subtracts), after which the convolution is 16 independent
(tiles x Cin) @ (Cin x Cout) matmuls, and a last transform gives back the 2x2 outputs
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). The arithmetic is
exact; in fp32 the result differs from a direct convolution by rounding only (~1e-6 relative).

Written for XLA's CPU backend, where it trains the seed model's step ~1.3x faster than one
matmul over gathered shifted copies (experiments/RESULTS.md):
- the gradients of both transforms are written out by hand: autodiff's transposes of their
  strided slices and stacks are chains of pads and adds that cost more than the matmuls;
- every stack has at most 8 operands, nested where more are needed: XLA's CPU fusion leaves
  a concatenate of more than 8 operands as a separate, single-threaded copy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# F(2x2, 3x3): input transform B^T, kernel transform G, output transform A^T.
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))
A, B = tuple(zip(*A_T)), tuple(zip(*B_T))  # their transposes, for the gradients
TILE, OUT = 4, 2  # input tile and output block sides


def _combine(matrix, parts: list[jax.Array]) -> list[jax.Array]:
    """[sum_j matrix[i][j] * parts[j] for each row i]: the coefficients are 0 and +-1."""
    rows = []
    for row in matrix:
        terms = [p if c == 1 else -p for c, p in zip(row, parts) if c]
        rows.append(sum(terms[1:], terms[0]))
    return rows


def _stack_4x4(parts: list[jax.Array]) -> jax.Array:
    """16 arrays -> (4, 4, ...), as stacks of 4: XLA CPU fuses a concatenate of <= 8 operands."""
    return jnp.stack([jnp.stack(parts[4 * i : 4 * i + 4]) for i in range(4)])


def _output_transform(M_TxNxO: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
    b, th, tw, o = shape
    m = M_TxNxO.reshape(TILE, TILE, b, th, tw, o)
    rows = _combine(A_T, [m[i] for i in range(TILE)])  # 2 x (4, B, th, tw, O)
    y = [_combine(A_T, [r[j] for j in range(TILE)]) for r in rows]  # y[i][j]: (B, th, tw, O)
    y_BxthxIxtwxJxO = jnp.stack([jnp.stack(y_i, 3) for y_i in y], 2)
    return y_BxthxIxtwxJxO.reshape(b, OUT * th, OUT * tw, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def output_transform(M_TxNxO: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
    """The 16 matmul products of each tile -> its 2x2 output block; `shape` is (B, tiles down,
    tiles across, Cout), and the result is NHWC."""
    return _output_transform(M_TxNxO, shape)


def _output_transform_fwd(M_TxNxO, shape):
    return _output_transform(M_TxNxO, shape), None


def _output_transform_bwd(shape, _, dy_BxHxWxO):
    b, th, tw, o = shape
    d = dy_BxHxWxO.reshape(b, th, OUT, tw, OUT, o)
    rows = _combine(A, [d[:, :, i] for i in range(OUT)])  # 4 x (B, th, tw, 2, O)
    dM = [e for r in rows for e in _combine(A, [r[:, :, :, j] for j in range(OUT)])]
    return (_stack_4x4(dM).reshape(TILE * TILE, b * th * tw, o),)


output_transform.defvjp(_output_transform_fwd, _output_transform_bwd)


def _input_transform(x_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, c = x_BxHxWxC.shape
    th, tw = (h - 2) // OUT, (w - 2) // OUT
    # Tile (t, s) starts at row 2t, column 2s: its k-th row, over all t, is one strided slice.
    rows = _combine(B_T, [x_BxHxWxC[:, k : k + OUT * th - 1 : OUT] for k in range(TILE)])
    V = [v for r in rows for v in _combine(B_T, [r[:, :, k : k + OUT * tw - 1 : OUT] for k in range(TILE)])]
    return _stack_4x4(V).reshape(TILE * TILE, b * th * tw, c)


@jax.custom_vjp
def input_transform(x_BxHxWxC: jax.Array) -> jax.Array:
    """Every 4x4 input tile (stride 2), transformed: (16, B * tiles, Cin)."""
    return _input_transform(x_BxHxWxC)


def _input_transform_fwd(x_BxHxWxC):
    return _input_transform(x_BxHxWxC), x_BxHxWxC.shape


def _input_transform_bwd(shape, dV_TxNxC):
    # Autodiff's transpose of the strided slices is 16 padded copies, summed: ~2x slower. Here the
    # gradient of each tile element is scattered by the parity of its row and column instead:
    # the rows 2t' + p of x get element p of tile t' and element p + 2 of tile t' - 1.
    b, h, w, c = shape
    th, tw = (h - 2) // OUT, (w - 2) // OUT
    d = dV_TxNxC.reshape(TILE, TILE, b, th, tw, c)
    across = [_combine(B, [d[a, j] for j in range(TILE)]) for a in range(TILE)]  # [a][column j]
    dD = [_combine(B, [across[a][j] for a in range(TILE)]) for j in range(TILE)]  # [column j][row i]

    def shifted(i, j):  # element (i, j) of every tile, placed on its parity plane
        return jnp.pad(dD[j][i], ((0, 0), (i // 2, 1 - i // 2), (j // 2, 1 - j // 2), (0, 0)))

    planes = [[sum(shifted(i, j) for i in (p, p + 2) for j in (q, q + 2)) for q in range(2)] for p in range(2)]
    dx = jnp.stack([jnp.stack(planes[p], 3) for p in range(2)], 2)  # (B, th + 1, 2, tw + 1, 2, C)
    return (dx.reshape(shape),)


input_transform.defvjp(_input_transform_fwd, _input_transform_bwd)


def conv3x3(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
    """'VALID', stride-1 3x3 convolution (as `lax.conv_general_dilated` with NHWC/HWIO);
    the output's height and width must be even."""
    b, h, w, c = x_BxHxWxC.shape
    o = kernel_3x3xCxO.shape[-1]
    if kernel_3x3xCxO.shape[:2] != (3, 3) or (h - 2) % OUT or (w - 2) % OUT:
        raise ValueError(f"conv3x3 needs a 3x3 kernel and an even output: {kernel_3x3xCxO.shape}, {x_BxHxWxC.shape}")
    V_TxNxC = input_transform(x_BxHxWxC)
    U_TxCxO = jnp.einsum("ai,ijco,bj->abco", G, kernel_3x3xCxO, G).reshape(TILE * TILE, c, o)
    M_TxNxO = jax.lax.dot_general(V_TxNxC, U_TxCxO, (((2,), (1,)), ((0,), (0,))))
    return output_transform(M_TxNxO, (b, (h - 2) // OUT, (w - 2) // OUT, o))
