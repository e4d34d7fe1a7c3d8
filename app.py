"""TinyGiant web app: record or upload a sound, ask about it, watch the reasoning stream, ask follow-ups.

    python app.py [--model REPO_OR_FOLDER] [--port 7860] [--examples DIR] [--no-int8]
    python app.py --backend http://127.0.0.1:8000/v1     # the model on a vLLM server instead of in this process
    tinygiant serve [same options]                       # writes synthetic example clips first, then runs this app
    tinygiant serve --engine vllm --model DIR            # starts a vLLM server and this app on it

Named `app.py` as Hugging Face Spaces expect; `tinygiant publish --space DIR` writes a Space folder around it. It needs
`gradio`, `transformers`, `soundfile` and `soxr` (and `openai` for `--backend`), and only its siblings
`parsing_tinygiant.py` (the prompt format, one place) and `client_tinygiant.py` (the chat-server client the tools use
too) of TinyGiant's files: the model runs its checkpoint's own remote code, or on a server.

- Where the model runs (a backend): in this process (`PipelineBackend`, the default: a laptop, a CPU Space), or behind
  an OpenAI-compatible server (`ServerBackend`, `--backend URL` or `$TINYGIANT_BACKEND`: TinyGiant on vLLM, which
  batches the requests of several users at once; the app then holds no model).
- In process, the model is `--model`, else `$TINYGIANT_MODEL`, else the `"model"` of `space.json` beside this file
  (which `tinygiant publish --space` writes): `default_model()`, the one home of that rule; `tinygiant ask` and
  `tinygiant serve` load it from here and add their own fallbacks. On a CPU its linear layers run as int8, and its
  language model on llama.cpp if llama-cpp-python is installed (`--no-int8` keeps floats and PyTorch). With
  `--backend`, `--model` is the served model's name (default: the server's only model).
- Follow-up questions in one chat are about the same clip; its encoder outputs come from the audio cache (the
  pipeline's, or the server's), so only the projector and the language model run again. A new clip starts a new chat.
- Example clips: `examples.json` in `--examples` (default `examples/` beside this file, as a Space ships them), a
  list of `{"audio": file name, "question": ..., "choices": [...]}`. They are written by `tinygiant serve` /
  `tinygiant publish --space` from TinyGiant's synthetic generator, so this file needs no generator of its own.
- Decoding is greedy by default on both backends, so that a question gets the same answer in process and on a
  server; `--sample` samples with the checkpoint's settings (`generation_config.json`: the pipeline reads it, and vLLM
  takes its defaults from the same file). Left to themselves the two would differ: transformers decodes greedily when
  that file sets no sampling, vLLM then samples at temperature 1.
- In process, one request runs at a time (a queue): two users never share the CPU cores mid-answer. On a server,
  `--concurrency` requests (default 16) are in flight at once.
- Bad input (no clip, a file that is not audio, a clip over `--max-seconds`) is explained in the page.
- For code, one named endpoint: `/answer(audio, question, choices)`, one question about one clip, returning
  `{"thinking", "answer", "choice", "text"}`
  (`gradio_client.Client(url).predict(handle_file("clip.wav"), "How many beeps?", ["two", "three"],
  api_name="/answer")`); bad input raises the page's sentence as an error. The chat's own events are private.
"""

import argparse
import importlib.util
import json
import os
import re
import threading
import time
from pathlib import Path

import soundfile
import torch
from transformers import TextIteratorStreamer, pipeline

try:
    from .client_tinygiant import ServerError, openai_client, server_errors
    from .parsing_tinygiant import (
        NO_DEFAULT_SYSTEM_PROMPT,
        chat_reply_text,
        format_question,
        openai_messages,
        parse_output,
        parse_response,
        reasoning_of,
    )
    from .parsing_tinygiant import conversation as new_conversation
except ImportError:
    if __package__:  # run as part of a package: the sibling is there, so a dependency it imports is missing
        raise
    from client_tinygiant import ServerError, openai_client, server_errors  # beside this file
    from parsing_tinygiant import (  # beside
        NO_DEFAULT_SYSTEM_PROMPT,
        chat_reply_text,
        format_question,  # this file
        openai_messages,
        parse_output,
        parse_response,
        reasoning_of,
    )
    from parsing_tinygiant import conversation as new_conversation

HERE = Path(__file__).resolve().parent
MAX_SECONDS = 120.0  # a 2-core CPU takes about a second per second of audio to encode; the model takes up to 600
THINKING_TITLE = "Reasoning"


def default_model():
    """`$TINYGIANT_MODEL`, else the `"model"` of `space.json` beside this file, else None."""
    if os.environ.get("TINYGIANT_MODEL"):
        return os.environ["TINYGIANT_MODEL"]
    space = HERE / "space.json"
    return json.loads(space.read_text()).get("model") if space.is_file() else None


def load_model(model, int8=None):
    """The `audio-reasoning` pipeline of a TinyGiant folder or Hub repo. On CPU, unless `int8=False`: int8 weights,
    and the language model on llama.cpp when llama-cpp-python is installed (about twice PyTorch's decoding speed)."""
    if int8 is None:
        int8 = not torch.cuda.is_available()
    llama_cpp = bool(int8) and importlib.util.find_spec("llama_cpp") is not None
    return pipeline("audio-reasoning", model=model, trust_remote_code=True, int8=int8, llama_cpp=llama_cpp)


class PipelineBackend:
    """The model in this process (an `audio-reasoning` pipeline); one request at a time."""

    concurrency = 1

    def __init__(self, pipe, call_kwargs=None):
        self.pipe, self.call_kwargs = pipe, dict(call_kwargs or {})

    def stream(self, conversation, choices=None):
        """Yields `(text so far, None)` while the model writes, then `(text, the pipeline's result)`."""
        streamer = TextIteratorStreamer(self.pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome = {}

        def generate():
            try:
                outcome["result"] = self.pipe(conversation, choices=choices, streamer=streamer, **self.call_kwargs)
            except Exception as error:  # raised below, in the caller's thread; the streamer must still end
                outcome["error"] = error
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text, None
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["result"]["text"], outcome["result"]


class ServerBackend:
    """The model behind an OpenAI-compatible chat server at `url` (TinyGiant on vLLM: `tinygiant serve --engine vllm`),
    streamed; `concurrency` requests at once. `call_kwargs` are the pipeline's names: `max_new_tokens`, `do_sample`
    (False: greedy) and `system_prompt` (`""`: none; by default the served checkpoint's own, which its chat template
    carries). Its result has the pipeline's fields, read by the same rule (`parse_output`)."""

    def __init__(self, url, model=None, call_kwargs=None, concurrency=16, timeout=600.0, api_key=None):
        self.client = openai_client(url, api_key, "TINYGIANT_BACKEND_API_KEY", timeout=timeout, max_retries=2)
        try:
            with server_errors(self.client):
                self.model = model or self.client.models.list().data[0].id
        except ServerError as error:
            raise RuntimeError(f"the model server at {url} did not answer: {error}") from error
        call_kwargs = dict(call_kwargs or {})
        self.system_prompt = call_kwargs.pop("system_prompt", None)
        self.request = {"max_tokens": call_kwargs.pop("max_new_tokens", None)}
        if call_kwargs.pop("do_sample", True) is False:
            self.request["temperature"] = 0.0
        if call_kwargs:
            raise ValueError(f"a server backend takes max_new_tokens, do_sample and system_prompt, not "
                             f"{sorted(call_kwargs)}")
        if self.system_prompt == "":
            self.request["extra_body"] = NO_DEFAULT_SYSTEM_PROMPT
        self.concurrency = concurrency

    def stream(self, conversation, choices=None):
        """Yields `(text so far, None)` as the server streams, then `(text, result)`."""
        if self.system_prompt and conversation[0]["role"] != "system":
            conversation = [{"role": "system", "content": self.system_prompt}, *conversation]
        content = reasoning = finish_reason = None
        try:
            with server_errors(self.client):
                chunks = self.client.chat.completions.create(model=self.model, messages=openai_messages(conversation),
                                                             stream=True, **self.request)
                for chunk in chunks:
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    piece = reasoning_of(delta)
                    if piece:
                        reasoning = (reasoning or "") + piece
                    if delta.content:
                        content = (content or "") + delta.content
                    finish_reason = chunk.choices[0].finish_reason or finish_reason
                    yield chat_reply_text(content, reasoning), None
        except ServerError as error:  # the server's own message says what was wrong
            if error.status is None:
                raise RuntimeError(f"the model server did not answer: {error.server_message}") from error
            raise RuntimeError(f"the model server refused the request: {error.server_message}") from error
        text = chat_reply_text(content, reasoning)
        result = parse_output(text, choices, finished=finish_reason != "length")
        reply = {"role": "assistant", "content": result["answer"] or "", "reasoning_content": result["thinking"]}
        result["generated_text"] = [*conversation, reply]
        yield text, result


def clip_problem(path, max_seconds):
    """A sentence saying why `path` cannot be used, or None if it can."""
    if not path:
        return "Record or upload a clip first, then ask about it."
    try:
        info = soundfile.info(path)
    except Exception:  # libsndfile's own message names codecs; users need the gist
        return f"Could not read **{Path(path).name}** as audio. Try a WAV, FLAC, OGG or MP3 file."
    if info.duration > max_seconds:
        return (f"The clip is {info.duration / 60:.1f} minutes long; this app takes clips up to "
                f"{max_seconds:.0f} seconds. Trim it and try again.")
    return None


def parse_choices(text):
    """Options typed as one per line or separated by commas or semicolons; None when there are none."""
    separators = "\n" if "\n" in text.strip() else ";" if ";" in text else ","
    choices = [c.strip() for c in text.split(separators) if c.strip()]
    return choices or None


def readable(thinking):
    """CoTA's `<PLANNING>...</PLANNING>` sections as bold headings (the page would drop unknown tags as HTML)."""
    text = re.sub(r"<\s*/\s*[A-Za-z]+\s*>", "\n\n", thinking)
    text = re.sub(r"<\s*([A-Za-z]+)\s*>\s*", lambda m: f"**{m.group(1).capitalize()}:** ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def chat_messages(history, text, done):
    """The chat as shown: earlier turns, then the reply being generated (reasoning in a collapsible block)."""
    parsed = parse_response(text)
    reply = []
    if parsed["thinking"] is not None:
        metadata = {"title": THINKING_TITLE, "status": "done" if done else "pending"}
        reply.append({"role": "assistant", "content": readable(parsed["thinking"]) or "…", "metadata": metadata})
    if parsed["answer"] is not None and (done or parsed["answer"]):
        reply.append({"role": "assistant", "content": parsed["answer"] or "…"})
    return history + reply


def build_app(backend, examples_dir=None, max_seconds=MAX_SECONDS):
    """The Gradio Blocks app on `backend` (a `PipelineBackend` or a `ServerBackend`)."""
    import gradio as gr  # here, so that the tools can read `default_model` without gradio installed

    def first_question(audio, question, choices):
        """(a new conversation about `audio`, its user text) or raises `ValueError` with the sentence to show."""
        problem = clip_problem(audio, max_seconds)
        if problem:
            raise ValueError(problem)
        user_text = format_question(question, choices)
        # No system message: the checkpoint's chat template gives its own (or the backend's system_prompt).
        return new_conversation(user_text, system_prompt=None, audio=audio), user_text

    def ask(audio, question, choices_text, history, state):
        previous = state = dict(state or {})  # kept if this question fails
        choices = parse_choices(choices_text or "")
        try:
            if audio and audio == state.get("clip"):  # a follow-up about the same clip
                user_text = format_question(question, choices)
                conversation = [*state["conversation"], {"role": "user", "content": user_text}]
            else:  # a new clip: a new conversation about it
                conversation, user_text = first_question(audio, question, choices)
                state, history = {"clip": audio}, [{"role": "user", "content": gr.Audio(audio)}]
        except ValueError as error:
            yield history, previous, f"⚠️ {capitalized(error)}"
            return
        history = [*history, {"role": "user", "content": user_text}]
        start = time.perf_counter()
        yield history, state, "Listening and thinking…"
        try:
            for text, result in backend.stream(conversation, choices):
                if result is None:
                    yield chat_messages(history, text, done=False), state, "Listening and thinking…"
        except Exception as error:  # shown in the page
            yield history, previous, f"⚠️ {capitalized(error)}"
            return
        shown = chat_messages(history, result["text"], done=True)
        if result["answer"] is None:
            shown.append({"role": "assistant", "content": "No answer: the reasoning reached the length limit."})
        elif choices:
            picked = result["choice"] if result["choice"] is not None else "none of the options"
            shown.append({"role": "assistant", "content": f"**Choice:** {picked}"})
        state["conversation"] = result["generated_text"]
        asked = sum(message["role"] == "user" for message in state["conversation"])
        yield shown, state, (f"Answered question {asked} about this clip in {time.perf_counter() - start:.1f} s. "
                             "Ask a follow-up, or give a new clip.")

    def answer(audio, question, choices):
        """One question about one clip (`choices`: a list of 2 to 6 options, or empty). Returns the model's
        `thinking`, its `answer` (None if the output reached the length limit first), the `choice` it picks (None
        without choices, or when none matches) and its whole output `text`."""
        try:
            choices = list(choices or []) or None
            conversation, _ = first_question(audio, question, choices)
            *_, (_, result) = backend.stream(conversation, choices)
        except Exception as error:
            raise gr.Error(capitalized(error), print_exception=False) from error
        return {"thinking": result["thinking"], "answer": result["answer"], "choice": result.get("choice"),
                "text": result["text"]}

    with gr.Blocks(title="TinyGiant") as app:
        gr.Markdown("# TinyGiant\nAsk a question about a sound, some music or speech. The model reasons, then answers.")
        with gr.Row():
            with gr.Column(scale=2):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="clip")
                question = gr.Textbox(label="Question", placeholder="What is happening in this clip?",
                                      elem_id="question")
                choices = gr.Textbox(label="Choices (optional)", placeholder="dog, cat, bird", elem_id="choices")
                with gr.Row():
                    send = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear = gr.Button("New chat")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="TinyGiant", height=600, elem_id="chat")
                status = gr.Markdown("Give a clip and a question.", elem_id="status")
        state = gr.State({})
        examples = read_examples(examples_dir)
        if examples:
            gr.Examples(examples, inputs=[audio, question, choices], label="Example clips")
        inputs, outputs = [audio, question, choices, chatbot, state], [chatbot, state, status]
        send.click(ask, inputs, outputs, api_visibility="private")
        question.submit(ask, inputs, outputs, api_visibility="private")
        clear.click(lambda: ([], {}, "Give a clip and a question."), None, outputs, api_visibility="private")
        with gr.Column(visible=False):  # the `/answer` endpoint's own inputs and output, never shown
            api_audio = gr.Audio(type="filepath", label="audio")
            api_question = gr.Textbox(label="question")
            api_choices = gr.Dropdown(label="choices", multiselect=True, allow_custom_value=True, choices=[])
            api_result = gr.JSON(label="result")
            gr.Button().click(answer, [api_audio, api_question, api_choices], api_result, api_name="answer")
    app.queue(default_concurrency_limit=backend.concurrency)
    return app


def capitalized(error):
    """An error's message as a sentence."""
    text = str(error).strip() or type(error).__name__
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def read_examples(examples_dir):
    """Rows `[audio path, question, "choice, choice"]` from `examples_dir/examples.json`, if there is one."""
    index = Path(examples_dir or HERE / "examples") / "examples.json"
    if not index.is_file():
        return []
    rows = json.loads(index.read_text())
    return [[str(index.parent / r["audio"]), r["question"], ", ".join(r.get("choices") or [])] for r in rows]


def build_parser(prog=None):
    """The app's options; `tinygiant serve` shows them under its own name, beside the engine's."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(),
                        help="checkpoint folder or Hub repo id (default: $TINYGIANT_MODEL, else space.json); with "
                        "--backend, the served model's name (default: the server's only model)")
    parser.add_argument("--backend", default=os.environ.get("TINYGIANT_BACKEND"),
                        help="an OpenAI-compatible server's URL (e.g. http://127.0.0.1:8000/v1) to run the model on "
                        "instead of this process (default: $TINYGIANT_BACKEND)")
    parser.add_argument("--concurrency", type=int, default=16, help="with --backend: requests in flight at once")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)))
    parser.add_argument("--examples", help="folder with examples.json (default: examples/ beside this file)")
    parser.add_argument("--no-int8", action="store_true", help="keep float weights on CPU")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="longest clip accepted")
    parser.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's generation config, else 1024")
    parser.add_argument("--sample", action="store_true", help="sample with the checkpoint's settings (its "
                        "generation_config.json) instead of decoding greedily, the default in process and on a server")
    parser.add_argument("--system-prompt", help="default: the checkpoint's own (the prompt it was trained with); "
                        "'' for none")
    return parser


def generation_options(args):
    """The options for either backend, in the pipeline's names (`ServerBackend` maps them onto the chat API)."""
    call_kwargs = {"do_sample": args.sample}
    if args.max_new_tokens:
        call_kwargs["max_new_tokens"] = args.max_new_tokens
    if args.system_prompt is not None:
        call_kwargs["system_prompt"] = args.system_prompt
    return call_kwargs


def main(argv=None, prog=None):
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    call_kwargs = generation_options(args)
    if args.backend:
        backend = ServerBackend(args.backend, args.model, call_kwargs, concurrency=args.concurrency)
    elif args.model:
        backend = PipelineBackend(load_model(args.model, int8=False if args.no_int8 else None), call_kwargs)
    else:
        parser.error("no model: pass --model (or --backend), or set TINYGIANT_MODEL")
    app = build_app(backend, args.examples, args.max_seconds)
    app.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
