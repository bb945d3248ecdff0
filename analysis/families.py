"""Where each model family keeps its decoder layers, attention, MLP and MLP hidden activation.

All family-specific knowledge lives here; the engine only asks for modules by site name.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harmmed_tui.analysis.errors import UnsupportedModelError


@dataclass(frozen=True)
class Family:
    name: str
    body: str  # attribute path from the CausalLM to the decoder stack's owner
    layers: str  # attribute of the body holding the decoder layers
    final_norm: str  # attribute of the body holding the final norm
    attn: str  # attribute of a decoder layer
    mlp: str  # attribute of a decoder layer
    down: str  # attribute of the MLP whose *input* is the neuron activation
    out: str  # attribute of the attention whose *input* is the heads' outputs, side by side


_LLAMA_LIKE = dict(
    body="model",
    layers="layers",
    final_norm="norm",
    attn="self_attn",
    mlp="mlp",
    down="down_proj",
    out="o_proj",
)

FAMILIES = {
    "gpt2": Family(
        "gpt2",
        body="transformer",
        layers="h",
        final_norm="ln_f",
        attn="attn",
        mlp="mlp",
        down="c_proj",
        out="c_proj",
    ),
    "gpt_neox": Family(
        "gpt_neox",
        body="gpt_neox",
        layers="layers",
        final_norm="final_layer_norm",
        attn="attention",
        mlp="mlp",
        down="dense_4h_to_h",
        out="dense",
    ),
    **{
        name: Family(name, **_LLAMA_LIKE)
        for name in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
            "smollm3",
        )
    },
}


def family_of(model: nn.Module) -> Family:
    model_type = model.config.model_type
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    # Unknown model types that follow the common `model.layers[i].{self_attn,mlp.down_proj}` layout still work.
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if layers is not None and len(layers) and hasattr(layers[0], "self_attn") and hasattr(layers[0], "mlp"):
        if hasattr(layers[0].mlp, "down_proj"):
            return Family(model_type, **_LLAMA_LIKE)
    supported = ", ".join(sorted(FAMILIES))
    raise UnsupportedModelError(f"model type '{model_type}' is not supported (supported: {supported})")


def _in_width(linear: nn.Module) -> int:
    """A projection's input width: nn.Linear keeps (out, in), GPT-2's Conv1D (in, out)."""
    return linear.weight.shape[1] if isinstance(linear, nn.Linear) else linear.weight.shape[0]


def config_d_mlp(config) -> int:
    """The MLP hidden width from a config alone (GPT-2 leaves n_inner unset for 4 x d_model)."""
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return width or 4 * config.hidden_size


class Anatomy:
    """The modules of one loaded model that sites name."""

    def __init__(self, model: nn.Module):
        self.family = family_of(model)
        f = self.family
        body = getattr(model, f.body)
        self.layers: nn.ModuleList = getattr(body, f.layers)
        self.final_norm: nn.Module = getattr(body, f.final_norm)
        self.lm_head: nn.Module = model.get_output_embeddings()
        self.softcap: float | None = getattr(model.config, "final_logit_softcapping", None)
        mlp0 = self.mlp(0)
        down = getattr(mlp0, f.down)
        self.d_model: int = model.config.hidden_size
        self.d_mlp: int = _in_width(down)
        # query heads (grouped-query models share keys and values, not outputs)
        self.n_heads: int = model.config.num_attention_heads

    @property
    def d_head(self) -> int:
        """The output projection's inputs each query head owns (head sites only need it)."""
        width = _in_width(self.out(0))
        if width % self.n_heads:
            raise UnsupportedModelError(
                f"{self.family.name}: the attention output projection's {width} inputs do not split into "
                f"{self.n_heads} heads: head sites are not available"
            )
        return width // self.n_heads

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def attn(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.family.attn)

    def mlp(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.family.mlp)

    def down(self, layer: int) -> nn.Module:
        return getattr(self.mlp(layer), self.family.down)

    def out(self, layer: int) -> nn.Module:
        out = getattr(self.attn(layer), self.family.out, None)
        if out is None:
            raise UnsupportedModelError(
                f"{self.family.name}: no attention output projection '{self.family.out}' in layer {layer}: "
                "head sites are not available"
            )
        return out

    def module(self, layer: int, module: str) -> nn.Module:
        """The module whose output (or, for `neuron` and `head`, whose input) a site reads."""
        return {
            "resid": self.layers.__getitem__,
            "direction": self.layers.__getitem__,  # the residual stream's component along a direction
            "attn": self.attn,
            "mlp": self.mlp,
            "neuron": self.down,
            "head": self.out,
        }[module](layer)

    def units(self, module: str, first: int, width: int = 1) -> range:
        """The input units a neuron site (`first` its unit) or a head site (`first` its head) patches."""
        if module == "head":
            return range(first * self.d_head, (first + width) * self.d_head)
        return range(first, first + width)

    def logits(self, hidden):
        """Logits from the last decoder layer's output, as the model's own head computes them."""
        logits = self.lm_head(self.final_norm(hidden)).float()
        if self.softcap:
            logits = (logits / self.softcap).tanh() * self.softcap
        return logits
