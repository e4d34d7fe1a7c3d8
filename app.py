"""TinyGiant web app: record or upload a sound, ask about it, watch the reasoning stream, ask follow-ups.

    python app.py [--model REPO_OR_FOLDER] [--port 7860] [--examples DIR] [--no-int8]
    tinygiant serve [same options]   # writes synthetic example clips first, then runs this app

Named `app.py` as Hugging Face Spaces expect; `tinygiant publish --space DIR` writes a Space folder around it. It needs
`gradio`, `transformers`, `soundfile` and `soxr`, and only its sibling `parsing_tinygiant.py` (the prompt format, one
place) of TinyGiant's files: the model runs its checkpoint's own remote code.

- The model is `--model`, else `$TINYGIANT_MODEL`, else the `"model"` of `space.json` beside this file (which
  `tinygiant publish --space` writes): `default_model()`, the one home of that rule; `tinygiant ask` and
  `tinygiant serve` load it from here and add their own fallbacks. On a CPU its linear layers run as int8, and its
  language model on llama.cpp if llama-cpp-python is installed (`--no-int8` keeps floats and PyTorch).
- Follow-up questions in one chat are about the same clip; its encoder outputs come from the pipeline's audio cache,
  so only the projector and the language model run again. A new clip starts a new chat.
- Example clips: `examples.json` in `--examples` (default `examples/` beside this file, as a Space ships them), a
  list of `{"audio": file name, "question": ..., "choices": [...]}`. They are written by `tinygiant serve` /
  `tinygiant publish --space` from TinyGiant's synthetic generator, so this file needs no generator of its own.
- One request runs at a time (a queue): two users never share the CPU cores mid-answer.
- Bad input (no clip, a file that is not audio, a clip over `--max-seconds`) is explained in the page.
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
    from .parsing_tinygiant import conversation as new_conversation, format_question, parse_response
except ImportError:
    if __package__:  # run as part of a package: the sibling is there, so a dependency it imports is missing
        raise
    from parsing_tinygiant import conversation as new_conversation, format_question, parse_response  # beside this file

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


def build_app(pipe, examples_dir=None, max_seconds=MAX_SECONDS, call_kwargs=None):
    """The Gradio Blocks app around `pipe` (an `audio-reasoning` pipeline); `call_kwargs` go to each of its calls."""
    import gradio as gr  # here, so that the tools can read `default_model` without gradio installed

    call_kwargs = dict(call_kwargs or {})

    def ask(audio, question, choices_text, history, state):
        previous = state = dict(state or {})  # kept if this question fails
        problem = None if audio and audio == state.get("clip") else clip_problem(audio, max_seconds)
        if problem:
            yield history, state, f"⚠️ {problem}"
            return
        choices = parse_choices(choices_text or "")
        try:
            user_text = format_question(question, choices)
        except ValueError as error:
            yield history, state, f"⚠️ {str(error).capitalize()}."
            return
        if audio != state.get("clip"):  # a new clip: a new conversation about it (the pipeline adds its system turn)
            state = {"clip": audio}
            history = [{"role": "user", "content": gr.Audio(audio)}]
            conversation = new_conversation(user_text, system_prompt=None, audio=audio)
        else:
            conversation = [*state["conversation"], {"role": "user", "content": user_text}]
        history = [*history, {"role": "user", "content": user_text}]

        streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome = {}

        def generate():
            try:
                outcome["result"] = pipe(conversation, choices=choices, streamer=streamer, **call_kwargs)
            except Exception as error:  # shown in the page; the streamer must still end
                outcome["error"] = error
                streamer.end()

        start = time.perf_counter()
        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        text = ""
        yield history, state, "Listening and thinking…"
        for piece in streamer:
            text += piece
            yield chat_messages(history, text, done=False), state, "Listening and thinking…"
        worker.join()
        if "error" in outcome:
            yield history, previous, f"⚠️ {outcome['error']}"
            return
        result = outcome["result"]
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

    with gr.Blocks(title="TinyGiant") as app:
        gr.Markdown("# TinyGiant\nAsk a question about a sound, some music or speech. The model reasons, then answers.")
        with gr.Row():
            with gr.Column(scale=2):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="clip")
                question = gr.Textbox(label="Question", placeholder="What is happening in this clip?", elem_id="question")
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
        send.click(ask, inputs, outputs)
        question.submit(ask, inputs, outputs)
        clear.click(lambda: ([], {}, "Give a clip and a question."), None, outputs)
    app.queue(default_concurrency_limit=1)
    return app


def read_examples(examples_dir):
    """Rows `[audio path, question, "choice, choice"]` from `examples_dir/examples.json`, if there is one."""
    index = Path(examples_dir or HERE / "examples") / "examples.json"
    if not index.is_file():
        return []
    rows = json.loads(index.read_text())
    return [[str(index.parent / r["audio"]), r["question"], ", ".join(r.get("choices") or [])] for r in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(),
                        help="checkpoint folder or Hub repo id (default: $TINYGIANT_MODEL, else space.json)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)))
    parser.add_argument("--examples", help="folder with examples.json (default: examples/ beside this file)")
    parser.add_argument("--no-int8", action="store_true", help="keep float weights on CPU")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="longest clip accepted")
    parser.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's generation config, else 1024")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of the model's sampling")
    parser.add_argument("--system-prompt", help="default: the pipeline's (Audio-Reasoner's); '' for none, as the "
                        "offline demo's model was trained")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: pass --model or set TINYGIANT_MODEL")
    call_kwargs = {}
    if args.max_new_tokens:
        call_kwargs["max_new_tokens"] = args.max_new_tokens
    if args.greedy:
        call_kwargs["do_sample"] = False
    if args.system_prompt is not None:
        call_kwargs["system_prompt"] = args.system_prompt
    pipe = load_model(args.model, int8=False if args.no_int8 else None)
    app = build_app(pipe, args.examples, args.max_seconds, call_kwargs)
    app.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
