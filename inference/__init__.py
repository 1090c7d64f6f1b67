"""The engine as a library: model specs, loading and quantization, batching, generation, vision, upstream
servers and the demo models. It imports nothing from chat/ or deepseek_web/: settings arrive as arguments."""
