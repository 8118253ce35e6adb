"""Where models and texts come from: bundled and GGUF files, Hugging Face folders and hub ids, architecture facts read without loading weights, and the texts that ship with Python."""
