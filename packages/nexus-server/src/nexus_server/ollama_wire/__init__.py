"""Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``...) ⇄ OpenAI, as dicts.

Nexus serves an Ollama-compatible front door (``nexus_server.ollama``) so Ollama clients can use
any backend. These pure functions translate requests to OpenAI bodies and OpenAI answers (whole or
streamed) back to Ollama's shapes; the door does the HTTP. One module per direction:

- ``to_openai``: Ollama requests → OpenAI bodies (``TranslationError`` for one that cannot be);
- ``to_ollama``: OpenAI answers, whole or streamed, → Ollama's answers, stream lines and errors;
- ``listings``: ``/api/tags``, ``/api/ps`` and ``/api/show`` entries, with what Ollama clients
  expect of a model's ``details`` guessed from its name.
 Formats follow ollama/ollama ``api/types.go`` and
``server/routes.go`` (v0.33) and what the ``ollama`` Python client parses.

Where the two formats do not map 1:1:

* Requests: ``keep_alive``, ``think``, ``logprobs``/``top_logprobs``, ``template``, ``context``
  (backend-specific token ids) and ``truncate`` are dropped. ``stream`` defaults to *true* as in
  Ollama. Options: see ``options_to_openai``.
* Tool calls: Ollama calls may lack ids; missing ids are made up as ``call_<n>`` and a ``tool``
  message without ``tool_call_id`` is linked to the first unanswered call with its ``tool_name``
  (or the first unanswered call at all).
* Responses: ``created_at`` is wall-clock time of the translation. Counts come from ``usage``.
  ``total_duration`` is measured from the caller's start; ``load_duration`` is 0 (a backend does
  not say). ``prompt_eval_duration``/``eval_duration`` come from llama.cpp's ``timings`` when
  present, else are measured when streaming (start to first token, first token to end), else
  are 0 and the whole time. ``done_reason`` is ``length`` or ``stop`` (tool calls end with
  ``stop``, as in Ollama). ``context`` is never returned: the token ids would be meaningless.
* Streaming: content and reasoning deltas become lines as they arrive; tool calls are sent whole,
  all in one line once the upstream finishes them (Ollama also sends a call only when parsed).
"""
