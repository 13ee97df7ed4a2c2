"""``builtin:gpt``: a small GPT-style byte-level language model on generated text.

No downloads: the corpus is generated deterministically from a small English
grammar (fixed seed, so every pod and every restart sees the same text). Bytes
are the tokens (vocabulary 256), so the untrained loss is ln 256 ≈ 5.5 nats and
a model that learns spelling and word order falls well below 2.

Sizes come from ``spec.trainer.args`` (``KUBETRAIN_WORKLOAD_ARGS``):
``layers`` (4), ``d_model`` (128), ``heads`` (4), ``corpus_chars`` (400000).
The defaults train visibly on a CPU in about a minute.

``corpus_file`` trains on your own text instead: a UTF-8 file, typically on a
volume the job mounts (``spec.pod.volumes``, ``spec.container.volumeMounts``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kubetrain_trainer.api import Workload, WorkloadContext
from kubetrain_trainer.mfu import flops_per_token

VOCAB = 256
CORPUS_SEED = 20240611

_ADJ = "small tall old young quiet bright dark happy tired brave clever gentle heavy quick slow red green blue golden silver".split()
_NOUN = "robot farmer cat dog river mountain teacher child bird engine garden city ship forest baker painter lamp window".split()
_VERB = "found saw carried painted followed watched built cleaned opened lifted visited crossed".split()
_IVERB = "sang slept laughed waited danced arrived rested".split()
_PLACE = "near the river|under the bridge|in the garden|on the hill|by the old gate|behind the station|inside the tower".split("|")
_NUM = "two three four five six seven eight nine ten eleven twelve".split()
_CONJ = "when|after|before|because|while".split("|")


def _np(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"{rng.choice(_NUM)} {rng.choice(_ADJ)} {rng.choice(_NOUN)}s"
    return f"the {rng.choice(_ADJ)} {rng.choice(_NOUN)}"


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:
        s = f"{_np(rng)} {rng.choice(_VERB)} {_np(rng)} {rng.choice(_PLACE)}"
    elif kind < 0.75:
        s = f"{rng.choice(_CONJ)} {_np(rng)} {rng.choice(_IVERB)}, {_np(rng)} {rng.choice(_VERB)} {_np(rng)}"
    else:
        s = f"{_np(rng)} {rng.choice(_IVERB)} {rng.choice(_PLACE)}"
    return s[0].upper() + s[1:] + "."


def generate_corpus(num_chars: int, seed: int = CORPUS_SEED) -> str:
    """Deterministic text of at least ``num_chars`` characters."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < num_chars:
        para = " ".join(_sentence(rng) for _ in range(rng.randint(2, 5))) + "\n"
        parts.append(para)
        total += len(para)
    return "".join(parts)


class TokenWindows(torch.utils.data.Dataset):
    """Sample ``i`` is the byte window ``[i·T, i·T + T + 1)``: T inputs plus the shifted targets."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise ValueError(f"corpus of {len(tokens)} tokens is shorter than one sequence of {seq_len}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.seq_len
        return self.tokens[start : start + self.seq_len + 1].long()


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = VOCAB
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for y in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Pre-norm decoder-only transformer; untied embeddings (simple to shard with FSDP2)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def non_embedding_params(self) -> int:
        emb = self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return sum(p.numel() for p in self.parameters()) - emb


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-byte cross entropy; logits are upcast so the loss is fp32 under any precision."""
    x, y = batch[:, :-1], batch[:, 1:]
    logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def config_from(ctx: WorkloadContext) -> GPTConfig:
    a = ctx.args
    cfg = GPTConfig(
        seq_len=ctx.sequence_length,
        d_model=int(a.get("d_model", 128)),
        n_layers=int(a.get("layers", 4)),
        n_heads=int(a.get("heads", 4)),
    )
    if cfg.d_model % cfg.n_heads:
        from kubetrain_trainer.failure import ConfigError

        raise ConfigError(f"builtin:gpt: d_model {cfg.d_model} is not divisible by heads {cfg.n_heads}")
    return cfg


def read_corpus(path: str, seq_len: int) -> bytes:
    """The bytes of a corpus file; one that is missing, unreadable or shorter than a sample can never
    train (ConfigError: the job fails at once instead of using its restarts)."""
    from kubetrain_trainer.failure import ConfigError

    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise ConfigError(f"builtin:gpt: corpus_file {path!r} cannot be read ({exc.strerror}): "
                          "is its volume in spec.pod.volumes and mounted by spec.container.volumeMounts?") from None
    if len(data) <= seq_len:
        raise ConfigError(f"builtin:gpt: corpus_file {path!r} has {len(data)} bytes, fewer than one sample "
                          f"(sequenceLength {seq_len} + 1)")
    return data


def make_workload(ctx: WorkloadContext) -> Workload:
    cfg = config_from(ctx)
    if "corpus_file" in ctx.args:
        data = read_corpus(ctx.args["corpus_file"], cfg.seq_len)
    else:
        data = generate_corpus(int(ctx.args.get("corpus_chars", 400_000))).encode("utf-8")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    dataset = TokenWindows(tokens, cfg.seq_len)
    probe = GPT(cfg)
    fpt = flops_per_token(probe.non_embedding_params(), cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.seq_len)
    del probe
    return Workload(
        model_factory=lambda: GPT(cfg),
        dataset=dataset,
        loss_fn=lm_loss,
        tokens_per_sample=cfg.seq_len,
        flops_per_token=fpt,
        shard_modules=lambda model: list(model.blocks),
        name="builtin:gpt",
    )
