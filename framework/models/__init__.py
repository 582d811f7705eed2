"""Models: recoup's transformer, and a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) for Hugging Face weights."""
