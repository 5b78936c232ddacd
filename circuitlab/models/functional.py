"""The transformer as a pure function of a parameter dict with a leading model axis.

Every parameter carries a leading axis M (models trained side by side) and tokens are (M, B, S).
A single model is the M = 1 case, so one code path serves a lone model, a stack of seeds and
hyperparameter variants, and the hooks of the `Transformer` module. Parameter names follow
TransformerLens (`embed.W_E`, `blocks.0.attn.W_Q`, `unembed.W_U`, ...), which makes export a
renaming-free copy.

Shapes: M models, B batch, S sequence, Q query positions, H heads, E d_head, D d_model,
F d_mlp, V input vocab, O output vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from circuitlab.models.config import ModelConfig

Params = Mapping[str, torch.Tensor]
HookCall = Callable[[str, torch.Tensor], torch.Tensor]

LN_EPS = 1e-5


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape (without the model axis), in a fixed order used for seeded init."""
    d, h, e, f = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    shapes: dict[str, tuple[int, ...]] = {
        "embed.W_E": (cfg.d_vocab, d),
        "pos_embed.W_pos": (cfg.n_ctx, d),
    }
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        if cfg.normalization:
            shapes |= {f"{b}.ln1.w": (d,), f"{b}.ln1.b": (d,)}
        for x in "QKV":
            shapes[f"{b}.attn.W_{x}"] = (h, d, e)
        for x in "QKV":
            shapes[f"{b}.attn.b_{x}"] = (h, e)
        shapes |= {f"{b}.attn.W_O": (h, e, d), f"{b}.attn.b_O": (d,)}
        if cfg.d_mlp:
            if cfg.normalization:
                shapes |= {f"{b}.ln2.w": (d,), f"{b}.ln2.b": (d,)}
            shapes |= {
                f"{b}.mlp.W_in": (d, f),
                f"{b}.mlp.b_in": (f,),
                f"{b}.mlp.W_out": (f, d),
                f"{b}.mlp.b_out": (d,),
            }
    if cfg.normalization:
        shapes |= {"ln_final.w": (d,), "ln_final.b": (d,)}
    shapes |= {"unembed.W_U": (d, cfg.d_vocab_out), "unembed.b_U": (cfg.d_vocab_out,)}
    return shapes


def init_params(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded init (no model axis): weights N(0, init_scale^2 / fan_in), biases 0, LN gains 1."""
    gen = torch.Generator().manual_seed(int(seed))
    params: dict[str, torch.Tensor] = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf.startswith("b"):
            params[name] = torch.zeros(shape)
        elif leaf == "w":  # LayerNorm gain
            params[name] = torch.ones(shape)
        else:
            # embeddings read one-hot tokens, so their scale is set by d_model like Nanda et al.
            fan_in = cfg.d_model if leaf in ("W_E", "W_pos", "W_Q", "W_K", "W_V") else shape[-2]
            if leaf == "W_O":
                fan_in = cfg.n_heads * cfg.d_head
            std = cfg.init_scale / math.sqrt(fan_in)
            params[name] = torch.randn(shape, generator=gen) * std
    return params


def flash_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(cfg: ModelConfig, device: torch.device, need_pattern: bool) -> str:
    """Pick the attention implementation.

    Patterns requested by hooks force the explicit path (the fused kernels never materialise
    them). Otherwise flash-attn on CUDA when installed; on CPU the explicit einsum path for short
    contexts (3x faster than SDPA at length 3, measured) and SDPA for long ones.
    """
    choice = cfg.attention_backend
    if need_pattern:
        return "explicit"
    if choice == "flash" and not flash_available(device):
        return "sdpa"
    if choice != "auto":
        return choice
    if flash_available(device):
        return "flash"
    return "explicit" if cfg.n_ctx <= 64 else "sdpa"


def _no_hook(name: str, x: torch.Tensor) -> torch.Tensor:
    return x


def _bcast(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """(M, *tail) parameter -> broadcastable against (M, ..., *tail) activations of rank ndim."""
    return p.view(p.shape[0], *([1] * (ndim - p.dim())), *p.shape[1:])


def _gather(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """table (M, R, *tail), rows (M, ...) int -> (M, ..., *tail).

    index_select, not advanced indexing: its backward (index_add) is ~7x faster on CPU.
    """
    m, r = table.shape[:2]
    offset = torch.arange(m, device=rows.device).view(m, *[1] * (rows.dim() - 1)) * r
    flat = table.reshape(m * r, -1).index_select(0, (rows + offset).reshape(-1))
    return flat.view(*rows.shape, *table.shape[2:])


# Under bf16 autocast on CPU, torch hands a bf16 (b)mm to oneDNN only when the whole call does
# more than 16**3 multiply-adds (its mkldnn `checksize`), a count that includes the batch and so
# the model axis; smaller ones run torch's own loops, which sum in another order. A model whose
# matmul has at most that many multiply-adds would then round differently alone than as a slice
# of a stack (measured: 1 in 26 such shapes differed, none of 201 larger ones). Those matmuls run
# in float32 instead (MKL, made stack-independent by MKL_CBWR, circuitlab/__init__.py); they are
# too small for bf16 to pay.
BF16_MIN_WORK = 16 * 16 * 16


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _small_under_autocast(work_per_model: int, device: torch.device) -> bool:
    """Whether a matmul of this many multiply-adds per model must leave bf16 autocast."""
    return device.type == "cpu" and work_per_model <= BF16_MIN_WORK and _autocast_cpu()


def _einsum(equation: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.einsum of two operands whose first index is the model axis; under bf16 autocast a
    contraction of at most BF16_MIN_WORK multiply-adds per model runs in float32."""
    if a.device.type == "cpu" and _autocast_cpu():
        inputs = equation.split("->")[0].split(",")
        sizes = dict(zip(inputs[0], a.shape, strict=True)) | dict(
            zip(inputs[1], b.shape, strict=True)
        )
        if _small_under_autocast(math.prod(sizes.values()) // max(a.shape[0], 1), a.device):
            with torch.autocast("cpu", enabled=False):
                return torch.einsum(equation, a.float(), b.float())
    return torch.einsum(equation, a, b)


def _full(t: torch.Tensor) -> torch.Tensor:
    """t in float32 when autocast made it bfloat16 or float16; float32 and float64 unchanged
    (the exactness tests run float64 models)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (M, ..., K) @ w (M, K, N) + b (M, N), the bias added inside the GEMM (one pass fewer
    over the output forward, none for its gradient)."""
    m, k = x.shape[0], x.shape[-1]
    if _small_under_autocast(x.numel() // max(m, 1) * w.shape[-1], x.device):
        with torch.autocast("cpu", enabled=False):
            out = torch.baddbmm(b.unsqueeze(1), x.reshape(m, -1, k).float(), w)
    else:
        out = torch.baddbmm(b.unsqueeze(1), x.reshape(m, -1, k), w)
    return out.view(*x.shape[:-1], w.shape[-1])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, hook: HookCall, name: str):
    x = x - x.mean(-1, keepdim=True)
    scale = hook(f"{name}.hook_scale", (x.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt())
    x = hook(f"{name}.hook_normalized", x / scale)
    return x * _bcast(w, x.dim()) + _bcast(b, x.dim())


def _attention(
    q: torch.Tensor,  # (M, B, Q, H, E)
    k: torch.Tensor,  # (M, B, S, H, E)
    v: torch.Tensor,  # (M, B, S, H, E)
    allowed: torch.Tensor,  # (Q, S) bool: which keys each query sees (`_allowed`)
    backend: str,
    hook: HookCall,
    prefix: str,
    tail_queries: bool,
) -> torch.Tensor:  # z: (M, B, Q, H, E)
    m, b, nq, h, e = q.shape
    if backend == "explicit":
        s = k.shape[2]
        if nq * s <= 64:
            # Tiny attention (e.g. `a b =`): batched matmuls of 1x32 by 32x3 run at a few
            # percent of peak on CPU, so multiply and sum instead (~5x faster forward+backward).
            scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1).permute(0, 1, 4, 2, 3)
        else:
            scores = _einsum("mbqhe,mbkhe->mbhqk", q, k)
        # float32 before the softmax: under bf16 autocast the einsum gives bfloat16 scores, and
        # float error in the softmax can stop grokking (Prieto et al. 2025); a no-op in fp32
        scores = _full(scores) / math.sqrt(e)
        scores = scores.masked_fill(~allowed, float("-inf"))
        scores = hook(f"{prefix}.hook_attn_scores", scores)
        pattern = hook(f"{prefix}.hook_pattern", scores.softmax(-1))
        return _mix_values(pattern.permute(0, 1, 3, 4, 2), v)
    if backend == "flash" and tail_queries:
        from flash_attn import flash_attn_func

        dtype = torch.bfloat16
        fold = lambda t: t.reshape(m * b, t.shape[2], h, e).to(dtype)  # noqa: E731
        # flash-attn aligns the causal mask bottom-right, which is right for a tail of queries;
        # a mask with nothing masked (bidirectional attention) is causal=False
        causal = not bool(allowed.all())
        z = flash_attn_func(fold(q), fold(k), fold(v), causal=causal)
        return z.to(q.dtype).reshape(m, b, nq, h, e)
    # under bf16 autocast SDPA takes bfloat16 q, k, v; its fused CPU and CUDA kernels keep the
    # scores and the softmax in float32 (their accumulation type)
    fold = lambda t: t.reshape(m * b, t.shape[2], h, e).transpose(1, 2)  # noqa: E731
    z = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=allowed)
    return z.transpose(1, 2).reshape(m, b, nq, h, e)


def score_table_pays(n_vocab: int, batch: int, d_head: int) -> bool:
    """Whether tabling block-0 scores beats per-example q*k products: the table has V*V entries
    per (query, key, head), made by a fast matmul, against batch*d_head multiply-adds by an
    element-wise kernel about 8x slower per operation (measured on CPU)."""
    return n_vocab * n_vocab * 8 <= batch * d_head


def _table_attention(
    params: Params,
    cfg: ModelConfig,
    embed_table: torch.Tensor,  # (M, S, V, D): token + position embedding of every pair
    tokens: torch.Tensor,  # (M, B, S)
    query_at: slice | torch.Tensor,
    allowed: torch.Tensor,  # (Q, S)
    backend: str,
    tail: bool,
) -> torch.Tensor:  # z: (M, B, Q, H, E)
    """Block 0 attention when its input is only (position, token) pairs.

    LayerNorm, Q, K and V are computed once per pair (S*V rows, not B*S) and gathered. When the
    vocabulary is small against the batch, the query-key products are also tabled, one score per
    (query pair, key pair, head), so no example forms a q*k product at all.
    """
    att = "blocks.0.attn"
    m, b, s = tokens.shape
    n_vocab, d_head = cfg.d_vocab, cfg.d_head
    table = embed_table
    if cfg.normalization:
        table = _layer_norm(table, params["blocks.0.ln1.w"], params["blocks.0.ln1.b"], _no_hook, "")

    def project(rows: torch.Tensor, x: str) -> torch.Tensor:  # (M, S', V, H, E)
        return _einsum("msvd,mhde->msvhe", rows, params[f"{att}.W_{x}"]) + _bcast(
            params[f"{att}.b_{x}"], 5
        )

    def pair_rows(toks: torch.Tensor) -> torch.Tensor:  # (M, B, S') -> row in a (S', V) table
        at = torch.arange(toks.shape[-1], device=toks.device)
        return at * n_vocab + toks

    # K and V are gathered separately: splitting one gathered KV tensor costs a cat of
    # non-contiguous gradients in the backward pass that is slower than both gathers
    q_table, k_table, v_table = (
        project(table[:, query_at], "Q"),
        project(table, "K"),
        project(table, "V"),
    )
    v = _gather(v_table.flatten(1, 2), pair_rows(tokens))
    q_tokens = tokens[:, :, query_at]
    n_q = q_tokens.shape[-1]
    if backend != "explicit" or not score_table_pays(n_vocab, b, d_head):
        q = _gather(q_table.flatten(1, 2), pair_rows(q_tokens))
        k = _gather(k_table.flatten(1, 2), pair_rows(tokens))
        return _attention(q, k, v, allowed, backend, _no_hook, att, tail)
    # scores[m, q, vq, s, vs, h] for every query pair and key pair, then one gather per example
    # float32 scores for the softmax, also when bf16 autocast made the einsum's output bfloat16
    score_table = _full(_einsum("mqahe,msche->mqasch", q_table, k_table)) / math.sqrt(d_head)
    row = (pair_rows(q_tokens).unsqueeze(-1) * s + torch.arange(s, device=tokens.device)) * (
        n_vocab
    ) + tokens.unsqueeze(2)  # (M, B, Q, S)
    scores = _gather(score_table.reshape(m, n_q * n_vocab * s * n_vocab, cfg.n_heads), row)
    pattern = scores.masked_fill(~allowed.unsqueeze(-1), float("-inf")).softmax(3)  # (M,B,Q,S,H)
    return _mix_values(pattern, v)


def _mix_values(
    pattern: torch.Tensor,  # (M, B, Q, S, H)
    v: torch.Tensor,  # (M, B, S, H, E)
) -> torch.Tensor:  # z: (M, B, Q, H, E)
    if pattern.shape[2] * pattern.shape[3] <= 64:
        # tiny attention: multiply and sum beats batched 1xS by SxE matmuls (see `_attention`)
        return (pattern.unsqueeze(-1) * v.unsqueeze(2)).sum(3)
    return _einsum("mbqsh,mbshe->mbqhe", pattern, v)


def _allowed(cfg: ModelConfig, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """(Q, S) bool: which key positions each query position attends to."""
    if not cfg.causal:
        return torch.ones(len(queries), len(keys), dtype=torch.bool, device=keys.device)
    return keys.view(1, -1) <= queries.view(-1, 1)


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: torch.Tensor,  # (M, B, S) int64
    *,
    answers_only: bool = True,
    hook: HookCall | None = None,
    backend: str = "explicit",
) -> torch.Tensor:
    """Logits (M, B, Q, O) at the answer positions, or at every position (Q = S)."""
    # Without hooks, block 0 reads only (token, position) pairs: its LayerNorm, Q, K and V are
    # computed once per vocabulary entry and gathered, not once per example (V*S rows, not B*S).
    use_tables = hook is None and tokens.shape[1] > cfg.d_vocab
    hook = hook or _no_hook
    m, _, s = tokens.shape
    # (position, token) pairs as row numbers of a (S * V) table
    pair = torch.arange(s, device=tokens.device).view(1, 1, s) * cfg.d_vocab + tokens
    if use_tables:
        embed_table = params["embed.W_E"].unsqueeze(1) + params["pos_embed.W_pos"][:, :s].unsqueeze(
            2
        )  # (M, S, V, D)
        # a lone block reads the residual stream only at its queries: gathered there, in its
        # loop, not at every position (~5% of a Nanda step, measured)
        x = _gather(embed_table.flatten(1, 2), pair) if cfg.n_layers > 1 else None
    else:
        x = hook("hook_embed", _gather(params["embed.W_E"], tokens))
        pos = params["pos_embed.W_pos"][:, :s].unsqueeze(1)  # (M, 1, S, D)
        x = x + hook("hook_pos_embed", pos.expand(-1, tokens.shape[1], -1, -1))
    positions = torch.arange(s, device=tokens.device)
    answers = list(cfg.answer_positions)
    for layer in range(cfg.n_layers):
        pre = f"blocks.{layer}"
        x = hook(f"{pre}.hook_resid_pre", x)
        # The last block only needs its queries, MLP and unembedding at the answer positions.
        if answers_only and layer == cfg.n_layers - 1 and len(answers) < s:
            tail = answers == list(range(s - len(answers), s))
            query_at = (
                slice(s - len(answers), s) if tail else torch.tensor(answers, device=tokens.device)
            )
        else:
            tail, query_at = True, slice(None)
        att = f"{pre}.attn"
        if use_tables and layer == 0:
            q_pos = positions[query_at]
            x_q = (
                x[:, :, query_at]
                if x is not None
                else _gather(embed_table.flatten(1, 2), pair[:, :, query_at])
            )
            allowed = _allowed(cfg, positions, q_pos)
            z = _table_attention(params, cfg, embed_table, tokens, query_at, allowed, backend, tail)
        else:
            h = (
                _layer_norm(x, params[f"{pre}.ln1.w"], params[f"{pre}.ln1.b"], hook, f"{pre}.ln1")
                if cfg.normalization
                else x
            )
            h_q, x_q, q_pos = h[:, :, query_at], x[:, :, query_at], positions[query_at]
            q = hook(
                f"{att}.hook_q",
                _einsum("mbqd,mhde->mbqhe", h_q, params[f"{att}.W_Q"])
                + _bcast(params[f"{att}.b_Q"], 5),
            )
            k = hook(
                f"{att}.hook_k",
                _einsum("mbsd,mhde->mbshe", h, params[f"{att}.W_K"])
                + _bcast(params[f"{att}.b_K"], 5),
            )
            v = hook(
                f"{att}.hook_v",
                _einsum("mbsd,mhde->mbshe", h, params[f"{att}.W_V"])
                + _bcast(params[f"{att}.b_V"], 5),
            )
            allowed = _allowed(cfg, positions, q_pos)
            z = _attention(q, k, v, allowed, backend, hook, att, tail)
        z = hook(f"{att}.hook_z", z)
        attn_out = _linear(z.flatten(-2), params[f"{att}.W_O"].flatten(1, 2), params[f"{att}.b_O"])
        x = hook(f"{pre}.hook_resid_mid", x_q + hook(f"{pre}.hook_attn_out", attn_out))
        if cfg.d_mlp:
            h = (
                _layer_norm(x, params[f"{pre}.ln2.w"], params[f"{pre}.ln2.b"], hook, f"{pre}.ln2")
                if cfg.normalization
                else x
            )
            h = hook(f"{pre}.hook_mlp_in", h)  # what the MLP (and a transcoder) reads
            mlp = f"{pre}.mlp"
            pre_act = hook(
                f"{mlp}.hook_pre",
                _linear(h, params[f"{mlp}.W_in"], params[f"{mlp}.b_in"]),
            )
            post = hook(
                f"{mlp}.hook_post", F.relu(pre_act) if cfg.act_fn == "relu" else F.gelu(pre_act)
            )
            mlp_out = _linear(post, params[f"{mlp}.W_out"], params[f"{mlp}.b_out"])
            x = x + hook(f"{pre}.hook_mlp_out", mlp_out)
        x = hook(f"{pre}.hook_resid_post", x)
    if cfg.normalization:
        x = _layer_norm(x, params["ln_final.w"], params["ln_final.b"], hook, "ln_final")
    x = hook("unembed.hook_in", x)
    return hook("unembed.hook_out", _linear(x, params["unembed.W_U"], params["unembed.b_U"]))


HOOK_NAMES_PER_LAYER = (
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "hook_mlp_in",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)


def hook_names(cfg: ModelConfig) -> list[str]:
    """Every hook point this architecture passes activations through, in forward order."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(cfg.n_layers):
        for leaf in HOOK_NAMES_PER_LAYER:
            if leaf.startswith(("ln1", "ln2")) and not cfg.normalization:
                continue
            if leaf.startswith(("ln2", "mlp", "hook_mlp")) and not cfg.d_mlp:
                continue
            names.append(f"blocks.{layer}.{leaf}")
    if cfg.normalization:
        names += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    return names + ["unembed.hook_in", "unembed.hook_out"]
