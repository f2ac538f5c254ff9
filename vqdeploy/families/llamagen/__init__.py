"""LlamaGen (FoundationVision/LlamaGen): a VQ tokenizer + a Llama-style class-to-image GPT, with classifier-free
guidance."""
