"""The OpenVINO engine: float IR export with optimum-intel, chat with openvino-genai, devices and device tuning."""
