"""Accuracy evaluation: perplexity over a text corpus (WikiText-2 protocol)."""
from .perplexity import load_ppl_text, perplexity, tokenize_stream, window_losses

__all__ = ["load_ppl_text", "perplexity", "tokenize_stream", "window_losses"]
