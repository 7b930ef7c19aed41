"""Package data: the CLIP BPE vocabulary (MIT, OpenAI) used to tokenize prompts offline."""
