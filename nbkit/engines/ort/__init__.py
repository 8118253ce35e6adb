"""The ONNX Runtime GenAI engine: models built by Microsoft Olive's ModelBuilder, and chat with onnxruntime-genai."""
