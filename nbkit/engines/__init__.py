"""The inference engines, each a subpackage behind one interface: OpenVINO (IR, NNCF, openvino-genai) and ONNX Runtime GenAI (built by Olive)."""
