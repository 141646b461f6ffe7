"""Architecture description shared by Mamba1 and Mamba2 models, independent of the checkpoint layout."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UnsupportedModelError


@dataclass
class MambaConfig:
    """Hyper-parameters of a Mamba1 (``arch='mamba1'``) or Mamba2 (``arch='mamba2'``) language model.

    ``vocab_size`` is the padded size of the embedding table; ``tokenizer_vocab_size`` the size before
    padding (logits past it are never sampled).
    """

    arch: str
    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    conv_bias: bool = True
    proj_bias: bool = False
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    tokenizer_vocab_size: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ("mamba1", "mamba2"):
            raise UnsupportedModelError(f"unsupported architecture {self.arch!r} (expected mamba1 or mamba2)")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.tokenizer_vocab_size is None:
            self.tokenizer_vocab_size = self.vocab_size
        self.dt_limit = (float(self.dt_limit[0]), float(self.dt_limit[1]))
        if self.arch == "mamba2":
            if self.d_inner % self.headdim:
                raise UnsupportedModelError(f"d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
            if self.nheads % self.ngroups:
                raise UnsupportedModelError(f"{self.nheads} heads cannot be split into {self.ngroups} groups")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels that go through the causal conv: x for Mamba1, x|B|C for Mamba2."""
        if self.arch == "mamba1":
            return self.d_inner
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def in_proj_dim(self) -> int:
        if self.arch == "mamba1":
            return 2 * self.d_inner
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dt_limit"] = list(self.dt_limit)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MambaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "dt_limit" in kw:
            kw["dt_limit"] = tuple(kw["dt_limit"])
        return cls(**kw)


# Real model shapes (state-spaces configs), used for random-weight speed work.
SHAPES: dict[str, dict[str, Any]] = {
    "mamba-130m": dict(arch="mamba1", d_model=768, n_layer=24, vocab_size=50280, d_state=16),
    "mamba-370m": dict(arch="mamba1", d_model=1024, n_layer=48, vocab_size=50280, d_state=16),
    "mamba-1.4b": dict(arch="mamba1", d_model=2048, n_layer=48, vocab_size=50280, d_state=16),
    "mamba-2.8b": dict(arch="mamba1", d_model=2560, n_layer=64, vocab_size=50280, d_state=16),
    "mamba2-130m": dict(arch="mamba2", d_model=768, n_layer=24, vocab_size=50288, d_state=128, chunk_size=256),
    "mamba2-370m": dict(arch="mamba2", d_model=1024, n_layer=48, vocab_size=50288, d_state=128, chunk_size=256),
    "mamba2-1.3b": dict(arch="mamba2", d_model=2048, n_layer=48, vocab_size=50288, d_state=128, chunk_size=256),
    "mamba2-2.7b": dict(arch="mamba2", d_model=2560, n_layer=64, vocab_size=50288, d_state=128, chunk_size=256),
    "mamba2-8b": dict(arch="mamba2", d_model=4096, n_layer=56, vocab_size=256000, d_state=128, ngroups=8,
                      chunk_size=128, tie_embeddings=False),
}


def shape_config(name: str) -> MambaConfig:
    """The config of a public model size by name (``mamba-2.8b``, ``mamba2-2.7b``, ``mamba2-8b``, ...)."""
    if name not in SHAPES:
        raise UnsupportedModelError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    return MambaConfig(**SHAPES[name])
