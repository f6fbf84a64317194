"""Front-ends that serve a loaded model to other programs: the OpenAI-compatible HTTP server
(`shaderbay serve`) and the `llm` plugin. They translate their protocol into generation requests
and the model's events back; `adapter` is the one module that calls into the model."""
